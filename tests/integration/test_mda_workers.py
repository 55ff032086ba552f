"""Local deliveries run in a worker per user (smtpd/mda/worker.py), seen on
the running daemon as root: the worker has the user's identity and nothing
more, serves that user's next deliveries without a new fork, and exits once
idle.  The runner's own rules (reuse limits, timeouts, failures) are in
tests/mda/test_mda_runner.py."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from smtpd.mda.runner import IDLE_SECONDS
from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon
from tests.integration.queue_helpers import maildir_files, send, show_queue, start, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="delivering as a user needs root")


def _workers(title: str, parent: int) -> dict[int, tuple[int, ...]]:
    """pid -> (real, effective, saved, fs uid) of every child of `parent`
    titled `title` (other daemons on the machine may have workers too)."""
    found: dict[int, tuple[int, ...]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv0 = Path(entry.path, "cmdline").read_bytes().split(b"\0")[0].decode()
            if argv0 != title:
                continue
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["PPid"]) != parent:
            continue
        found[int(entry.name)] = tuple(int(x) for x in fields["Uid"].split())
    return found


def test_one_worker_per_user_reused_then_retired(workdir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    mail = workdir / "mail"
    mail.mkdir()
    os.chown(mail, nobody.pw_uid, nobody.pw_gid)
    conf = (f"listen on 127.0.0.1 port {free_port()}\n"
            f'action "local" maildir "{mail}/box" user nobody\n'
            'match from any for local action "local"\n')
    d = start(Daemon(workdir, conf))
    assert d.proc is not None
    parent = d.proc.pid  # the daemon's parent: the workers are its children
    try:
        pids: list[set[int]] = []
        for n in range(1, 4):  # one after the other: each finds the worker idle
            send(d.port, "root@localhost", ["root@localhost"], f"Subject: {n}\n\nhi\n")
            wait_until(f"delivery {n}", lambda n=n: len(maildir_files(mail / "box")) == n)
            # and its result handled (the file shows before the worker answers):
            # only then is the worker idle, ready for the next message
            wait_until("an empty queue", lambda: show_queue(d) == [] or None)
            workers = _workers("smtpd: mda nobody", parent)
            assert all(ids == (nobody.pw_uid,) * 4 for ids in workers.values()), workers
            pids.append(set(workers))
        assert len(pids[0]) == 1 and pids[0] == pids[1] == pids[2], pids
        for path in maildir_files(mail / "box"):
            assert path.stat().st_uid == nobody.pw_uid
        [pid] = pids[0]
        assert os.readlink(f"/proc/{pid}/root") == "/"
        # idle for IDLE_SECONDS: retired, so nothing stays behind as the user
        wait_until("the idle worker to exit",
                   lambda: not _workers("smtpd: mda nobody", parent),
                   timeout=IDLE_SECONDS + 10)
        assert d.proc is not None and d.proc.poll() is None
    finally:
        d.kill_group()
