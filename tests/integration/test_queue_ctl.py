"""Queue management through smtpctl against the real daemon: pause/resume
mda, show queue in upstream's format, show status, remove, schedule and
per-envelope pause (COMPAT.md "smtpctl")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpctl.client import ControlClient
from smtpd.queue.listing import PAGE
from tests.integration.conftest import basic_config, free_port
from tests.integration.daemon import Daemon
from tests.integration.queue_helpers import (
    QueueLine,
    maildir_files,
    read_mail,
    send,
    show_queue,
    start,
    wait_mails,
    wait_until,
)

ROOT = "root@localhost"


@pytest.fixture
def paused(workdir: Path) -> Iterator[Daemon]:
    """A daemon whose MDA is paused from the start (`-P mda`, as upstream)."""
    d = start(Daemon(workdir, basic_config(workdir), args=("-P", "mda")))
    yield d
    d.kill_group()


@pytest.fixture
def running(workdir: Path) -> Iterator[Daemon]:
    d = start(Daemon(workdir, basic_config(workdir)))
    yield d
    d.kill_group()


def _queued(d: Daemon, n: int) -> list[QueueLine]:
    # wrapped in a tuple: an empty queue is a result, not "not yet"
    return wait_until(f"{n} envelopes in show queue",
                      lambda: ((q,) if len(q := show_queue(d)) == n else None), 5)[0]


def test_pause_mda_show_queue_resume(running: Daemon) -> None:
    daemon = running
    ok = daemon.smtpctl("pause", "mda")
    assert (ok.returncode, ok.stdout) == (0, "command succeeded\n")
    again = daemon.smtpctl("pause", "mda")
    assert (again.returncode, again.stderr.strip()) == (1, "command failed")
    status = daemon.smtpctl("show", "status")
    assert status.stdout.splitlines() == ["MDA paused", "MTA running", "SMTP running"]

    t0 = int(time.time())
    msgids = [send(daemon.port, ROOT, [ROOT], f"Subject: paused {i}\n\nbody {i}\n")
              for i in range(3)]
    lines = _queued(daemon, 3)
    assert sorted(q.msgid for q in lines) == sorted(msgids)
    for q in lines:
        assert len(q.evpid) == 16 and int(q.evpid, 16)
        assert (q.family, q.type, q.flags) == ("inet4", "mda", "")
        assert (q.sender, q.rcpt, q.dest) == (ROOT, ROOT, ROOT)
        assert t0 - 1 <= q.ctime <= int(time.time()) + 1
        assert q.expire > q.ctime  # ctime + queue ttl (4 days by default)
        assert (q.lasttry, q.retry, q.runstate, q.errorline) == (0, 0, "pending", "")
    time.sleep(0.5)
    assert maildir_files(daemon.maildir / "root") == []  # paused means paused

    ok = daemon.smtpctl("resume", "mda")
    assert (ok.returncode, ok.stdout) == (0, "command succeeded\n")
    files = wait_mails(daemon.maildir / "root", 3, 10)
    subjects = sorted(str(read_mail(f)["Subject"]) for f in files)
    assert subjects == [f"paused {i}" for i in range(3)]
    wait_until("an empty queue", lambda: show_queue(daemon) == [] or None, 5)

    again = daemon.smtpctl("resume", "mda")
    assert (again.returncode, again.stdout, again.stderr) == (1, "", "command failed\n")
    status = daemon.smtpctl("show", "status")
    assert status.stdout.splitlines() == ["MDA running", "MTA running", "SMTP running"]
    daemon.wait_for(r"info: mda paused")
    daemon.wait_for(r"info: mda resumed")


def test_remove_by_evpid_by_msgid_and_all(paused: Daemon) -> None:
    d = paused
    one = send(d.port, ROOT, [ROOT], "Subject: one\n\nx\n")
    two = send(d.port, ROOT, [ROOT],
               "Subject: two\n\nx\n")
    rest = [send(d.port, ROOT, [ROOT], f"Subject: rest {i}\n\nx\n") for i in range(2)]
    lines = _queued(d, 4)
    by_msgid = {q.msgid: q for q in lines}

    out = d.smtpctl("remove", by_msgid[one].evpid)
    assert (out.returncode, out.stdout) == (0, "1 envelope removed\n")
    out = d.smtpctl("remove", two)
    assert (out.returncode, out.stdout) == (0, "1 envelope removed\n")
    left = _queued(d, 2)
    assert sorted(q.msgid for q in left) == sorted(rest)
    out = d.smtpctl("remove", "0123456789abcdef")
    assert (out.returncode, out.stdout) == (0, "0 envelope removed\n")

    out = d.smtpctl("remove", "all")
    assert (out.returncode, out.stdout) == (0, "2 envelopes removed\n")
    _queued(d, 0)
    # the spool follows: no message directory is left behind
    wait_until("an empty spool", lambda: not any((d.spool / "queue").glob("*/*")) or None, 5)
    d.smtpctl("resume", "mda")
    time.sleep(0.5)
    assert maildir_files(d.maildir / "root") == []
    assert "removed" in d.log_text()


def test_schedule_and_pause_envelope(paused: Daemon) -> None:
    d = paused
    a = send(d.port, ROOT, [ROOT], "Subject: a\n\nx\n")
    b = send(d.port, ROOT, [ROOT], "Subject: b\n\nx\n")
    lines = {q.msgid: q for q in _queued(d, 2)}
    eva, evb = lines[a].evpid, lines[b].evpid
    assert eva != evb

    out = d.smtpctl("schedule", eva)
    assert (out.returncode, out.stdout) == (0, "1 envelope scheduled\n")
    out = d.smtpctl("schedule", "all")
    assert (out.returncode, out.stdout) == (0, "2 envelopes scheduled\n")

    out = d.smtpctl("pause", "envelope", eva)
    assert (out.returncode, out.stdout) == (0, "1 envelope paused\n")

    # a suspended envelope stays while the rest is delivered
    d.smtpctl("resume", "mda")
    wait_mails(d.maildir / "root", 1, 10)
    time.sleep(0.5)
    files = maildir_files(d.maildir / "root")
    assert [str(read_mail(f)["Subject"]) for f in files] == ["b"]
    assert [q.evpid for q in show_queue(d)] == [eva]

    out = d.smtpctl("resume", "envelope", eva)
    assert (out.returncode, out.stdout) == (0, "1 envelope resumed\n")
    wait_mails(d.maildir / "root", 2, 10)
    wait_until("an empty queue", lambda: show_queue(d) == [] or None, 5)


def test_paused_envelope_shows_suspend(paused: Daemon) -> None:
    d = paused
    a = send(d.port, ROOT, [ROOT], "Subject: a\n\nx\n")
    b = send(d.port, ROOT, [ROOT], "Subject: b\n\nx\n")
    lines = {q.msgid: q for q in _queued(d, 2)}
    eva, evb = lines[a].evpid, lines[b].evpid
    out = d.smtpctl("pause", "envelope", eva)
    assert (out.returncode, out.stdout) == (0, "1 envelope paused\n")
    by_evpid = {q.evpid: q for q in show_queue(d)}
    # smtpctl.c show_queue_envelope(): EF_SUSPEND is printed in the flags field
    # (0-based field 3), comma-separated after bounce/auth/internal
    assert "suspend" in by_evpid[eva].flags.split(","), by_evpid[eva]
    assert by_evpid[evb].flags == "", by_evpid[evb]
    out = d.smtpctl("resume", "envelope", eva)
    assert (out.returncode, out.stdout) == (0, "1 envelope resumed\n")
    assert {q.evpid: q for q in show_queue(d)}[eva].flags == ""


def test_show_envelope_and_message(paused: Daemon) -> None:
    d = paused
    msgid = send(d.port, "sender@client.test", [ROOT],
                 "Subject: shown\nMessage-ID: <shown@client.test>\n\nline one\n")
    (q,) = _queued(d, 1)
    out = d.smtpctl("show", "envelope", q.evpid)
    assert out.returncode == 0, out.stderr
    fields = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    # COMPAT.md: 6.8's `show envelope` keys
    for key in ("version", "dispatcher", "type", "smtpname", "helo", "hostname", "sockaddr",
                "sender", "rcpt", "dest", "ctime", "last-try", "last-bounce", "ttl", "retry",
                "dsn-notify", "mda-user"):
        assert key in fields or f"{key}:" in out.stdout, (key, out.stdout)
    assert fields["version"] == "3"
    assert fields["dispatcher"] == "local"
    assert fields["type"] == "mda"
    assert fields["sender"] == "sender@client.test"
    assert fields["rcpt"] == ROOT
    assert fields["helo"] == "client.test"

    for ident in (q.evpid, msgid):
        out = d.smtpctl("show", "message", ident)
        assert out.returncode == 0, out.stderr
        assert f"id {msgid}" in out.stdout  # the Received header we added
        assert "Message-ID: <shown@client.test>" in out.stdout
        assert out.stdout.rstrip("\n").endswith("line one")

    out = d.smtpctl("show", "envelope", "0123456789abcdef")
    assert out.returncode != 0


def test_show_queue_streams_a_queue_of_several_pages(workdir: Path) -> None:
    """More envelopes than a page of the streamed listing (smtpd/queue/listing.py
    PAGE): each shown once with the scheduler's state of its own page, and a
    client that leaves mid-listing disturbs nothing."""
    conf = (f"listen on 127.0.0.1 port {free_port()}\n"
            'action "out" relay\nmatch from any for domain "example.net" action "out"\n')
    d = start(Daemon(workdir, conf, args=("-P", "mta")))  # nothing leaves the queue
    try:
        per_message, messages = 400, 3
        assert per_message * messages > 2 * PAGE
        for m in range(messages):
            rcpts = [f"user{m}-{i}@example.net" for i in range(per_message)]
            send(d.port, "sender@client.test", rcpts, f"Subject: {m}\n\nx\n")
        lines = _queued(d, per_message * messages)
        assert len({q.evpid for q in lines}) == len(lines)
        assert {q.type for q in lines} == {"mta"} and {q.runstate for q in lines} == {"pending"}
        # a state from the scheduler on the last page is merged in too
        last = sorted(q.evpid for q in lines)[-1]
        assert d.smtpctl("pause", "envelope", last).returncode == 0
        by_evpid = {q.evpid: q for q in show_queue(d)}
        assert "suspend" in by_evpid[last].flags.split(",")

        # clients that leave mid-listing, at and around page boundaries: each
        # is dropped, never control (it once died writing to one of them)
        for n in (1, 5, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE + 7, 1, 5, PAGE, 3) * 2:
            client = ControlClient(str(d.socket))
            try:
                got = [item for _, item in zip(range(n), client.command(["show", "queue"]),
                                               strict=False)]
                assert len(got) == n and all(isinstance(x, tuple) for x in got)
            finally:
                client.close()  # the queue drops the walk
        assert d.proc is not None and d.proc.poll() is None
        assert len(show_queue(d)) == per_message * messages
    finally:
        d.kill_group()
