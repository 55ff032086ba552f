"""SIGKILL at the two dangerous moments of a Maildir delivery (COMPAT.md §1
"exactly once after a crash"): while the file is still being written in
tmp/, and right after it appeared in new/ but before the queue removed the
envelope.  After a restart the message is in new/ exactly once, whole.

The delivery child runs in its own session (mda/runner.py setsid), so the
group kill does not stop it: it may finish its file after the daemon died,
racing the restarted daemon's redelivery under the recorded name."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon
from tests.integration.queue_helpers import maildir_files, send, show_queue, start, wait_until

ROOT = "root@localhost"
LINE = "0123456789" * 7 + "\n"
LINES = 120_000  # ~8.5 MB: the delivery takes long enough to be caught


def _has_file(path: Path) -> bool:
    try:
        return any(True for _ in os.scandir(path))
    except FileNotFoundError:
        return False


def _watch(maildir: Path, timeout: float = 15.0) -> str:
    """Spin until a file shows up in tmp/ or new/ and say where (tight: the
    tmp/ window is a few ms on an idle machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sub in ("tmp", "new"):
            if _has_file(maildir / sub):
                return sub
        time.sleep(0.0005)
    raise AssertionError(f"no delivery into {maildir} in {timeout}s")


@pytest.mark.parametrize("moment", ["tmp", "new"])
def test_kill_during_maildir_delivery(workdir: Path, moment: str) -> None:
    conf = basic_config(workdir)
    maildir = workdir / "mail" / "root"
    d = start(Daemon(workdir, conf, args=("-P", "mda")))
    try:
        msgid = send(d.port, ROOT, [ROOT], "Subject: big\n\n" + LINE * LINES)
        queue_pid = d.pids()["smtpd: queue"]
        d.smtpctl("resume", "mda")
        if moment == "tmp":
            where = _watch(maildir)
        else:
            wait_until("a file in new/", lambda: _has_file(maildir / "new"), 15, 0.0005)
            where = "new"
        # The queue first, in one system call: walking the group for the
        # others takes long enough for a fast delivery to finish and its
        # envelope to be removed, and then the test would prove nothing.
        os.kill(queue_pid, signal.SIGKILL)
        d.kill_group()
        if where != moment:  # pragma: no cover - a loaded machine missed the window
            pytest.skip(f"the file was already in {where}/ when first seen")
        spool_has_it = (d.spool / "queue" / msgid[:2] / msgid).is_dir()
        # the kill must have come before the queue forgot the envelope, or the
        # test proves nothing
        if not spool_has_it:
            pytest.skip(f"delivery finished before the kill ({moment})")  # pragma: no cover

        d = start(Daemon(workdir, conf))  # without -P mda this time
        try:
            wait_until("an empty queue", lambda: show_queue(d) == [] or None, 20)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {show_queue(d)}; maildir "
                                 f"{sorted(str(p) for p in maildir.rglob('*'))}; log:\n"
                                 + d.log_text()) from None
        files = maildir_files(maildir)
        assert len(files) == 1, files
        text = files[0].read_text()
        assert f"id {msgid}" in text
        assert text.endswith(LINE) and text.count(LINE) == LINES
    finally:
        d.kill_group()
