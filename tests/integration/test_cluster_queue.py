"""Two daemons share one PostgreSQL queue (issue 14): mail accepted by node A
is delivered by node B after A is killed with SIGKILL; nothing is lost and
nothing is delivered twice.  Both nodes deliver into the same Maildir tree
(as nodes sharing a mail store would)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon, temp_workdir
from tests.integration.queue_helpers import (
    maildir_files,
    read_mail,
    send,
    wait_mails,
    wait_until,
)
from tests.servers import PgServer, pg_server

__all__ = ["pg_server"]

LEASE = 2  # seconds: short, so that takeover happens within the test's time
ROUNDS = 3
PER_ROUND = 4

CONFIG = """
queue backend postgres "%(conninfo)s"
queue node "%(node)s"
queue lease %(lease)ds
%(extra)s
listen on 127.0.0.1 port %(port)d
action "local" maildir "%(mail)s/%%{user.username}"
match from any for local action "local"
"""


class Cluster:
    def __init__(self, conninfo: str, mail: Path) -> None:
        self.conninfo = conninfo
        self.mail = mail
        self.dirs: list[Path] = []
        self.daemons: list[Daemon] = []

    def node(self, name: str, *, paused: bool = False, extra: str = "") -> Daemon:
        work = temp_workdir()
        self.dirs.append(work)
        d = Daemon(work, CONFIG % {"conninfo": self.conninfo, "node": name, "lease": LEASE,
                                   "port": free_port(), "mail": self.mail, "extra": extra},
                   args=("-P", "mda") if paused else ())
        self.daemons.append(d)
        d.start()
        d.wait_for("envelopes loaded from the spool", 20)
        return d

    def rows(self, owner: str | None = None) -> list[tuple[str, str]]:
        return [(k, o) for k, o, _data in self.blobs() if owner is None or o == owner]

    def blobs(self) -> list[tuple[str, str, bytes]]:
        with psycopg.connect(self.conninfo) as conn:
            rows = conn.execute("SELECT kind, owner, data FROM pysmtpd_blob"
                                " WHERE kind <> 'keycheck' ORDER BY kind").fetchall()
        return [(str(k), str(o), bytes(d)) for k, o, d in rows]

    def close(self) -> None:
        for d in self.daemons:
            d.kill_group()
        for work in self.dirs:
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def cluster(pg_server: PgServer) -> Iterator[Cluster]:
    mail = temp_workdir()
    c = Cluster(pg_server.create_database(), mail)
    yield c
    c.close()
    shutil.rmtree(mail, ignore_errors=True)


def subjects(box: Path) -> list[str]:
    return sorted(str(read_mail(p)["Subject"]) for p in maildir_files(box))


def settle_exactly(box: Path, want: list[str], c: Cluster) -> None:
    """All of ``want`` delivered, each once, and the shared queue empty."""
    wait_mails(box, len(want), timeout=30)
    wait_until("an empty shared queue", lambda: not c.rows() or None, timeout=15)
    time.sleep(LEASE / 2)  # a duplicate would show up within a renewal or two
    assert subjects(box) == sorted(want)


ENCRYPTED = 'queue encryption "0123456789abcdef0123456789abcdef"\nqueue compression'


def test_node_b_delivers_what_killed_node_a_accepted(cluster: Cluster) -> None:
    """With queue encryption on both nodes (one key): the database only ever
    holds ciphertext, and B decrypts what A wrote."""
    box = cluster.mail / "root"
    b = cluster.node("node-b", extra=ENCRYPTED)
    want: list[str] = []
    for n in range(ROUNDS):
        # A keeps what it accepts (MDA paused), then dies without a word
        a = cluster.node("node-a", paused=True, extra=ENCRYPTED)
        batch = [f"round {n} mail {i}" for i in range(PER_ROUND)]
        for subject in batch:
            send(a.port, "sender@example.org", ["root@localhost"],
                 f"Subject: {subject}\r\n\r\nbody\r\n")
        owned = cluster.rows("node-a")
        assert sorted(k for k, _ in owned) == ["envelope"] * PER_ROUND + ["message"] * PER_ROUND
        for _kind, _owner, data in cluster.blobs():
            for word in (b"round", b"Subject", b"root", b"sender", b"example.org"):
                assert word not in data
        a.kill_group()
        want += batch
        settle_exactly(box, want, cluster)
        b.wait_for(f"node node-b took over {PER_ROUND} envelopes", 5)
    assert b.proc is not None and b.proc.poll() is None


def test_kill_while_delivering_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    """A is killed right after its last 250, while it is delivering: the
    envelopes it had not removed yet are taken over; the Maildir name stored
    with each envelope keeps a redelivery from writing a second copy."""
    box = cluster.mail / "root"
    cluster.node("node-b")
    want: list[str] = []
    for n in range(ROUNDS):
        a = cluster.node("node-a")
        batch = [f"busy {n} mail {i}" for i in range(PER_ROUND)]
        for subject in batch:
            send(a.port, "sender@example.org", ["root@localhost"],
                 f"Subject: {subject}\r\n\r\nbody\r\n")
        a.kill_group()
        want += batch
        settle_exactly(box, want, cluster)


def test_frozen_node_is_fenced_and_exits(cluster: Cluster) -> None:
    """A is frozen (SIGSTOP) past its lease: B takes its mail over and
    delivers it; when A wakes up its writes are fenced and its queue process
    exits (fail closed) instead of delivering from stale state."""
    box = cluster.mail / "root"
    b = cluster.node("node-b")
    a = cluster.node("node-a", paused=True)
    want = [f"frozen mail {i}" for i in range(PER_ROUND)]
    for subject in want:
        send(a.port, "sender@example.org", ["root@localhost"], f"Subject: {subject}\r\n\r\nx\r\n")
    assert a.proc is not None
    os.killpg(a.proc.pid, signal.SIGSTOP)
    try:
        settle_exactly(box, want, cluster)
        b.wait_for(f"node node-b took over {PER_ROUND} envelopes", 5)
    finally:
        os.killpg(a.proc.pid, signal.SIGCONT)
    a.smtpctl("resume", "mda")  # would deliver, were it not fenced
    a.wait_for("lost its lease", 10)
    assert a.proc.wait(timeout=20) != 0
    time.sleep(LEASE / 2)
    assert subjects(box) == sorted(want)
