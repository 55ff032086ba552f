"""What the daemon finds in its spool after a crash or a disk error: a
corrupt envelope file is moved aside to corrupt/ with a log line and the
rest of the mail still flows; leftovers of a kill are cleaned at start."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon
from tests.integration.queue_helpers import (
    QUEUE_LIVE,
    read_mail,
    send,
    show_queue,
    start,
    wait_mails,
    wait_until,
)

ROOT = "root@localhost"


def _evpid_file(spool: Path, msgid: str) -> Path:
    files = [f for f in (spool / "queue" / msgid[:2] / msgid).iterdir() if f.name != "message"]
    assert len(files) == 1, files
    return files[0]


@pytest.mark.parametrize("garbage", [
    b"\x00\xffnot an envelope\n\x01",
    b"",
    b"version: 3\nversion: 3\n",  # duplicated key: refused (CVE-2020-8794 lesson)
], ids=["binary", "empty", "duplicate-key"])
def test_corrupt_envelope_moved_aside(workdir: Path, garbage: bytes) -> None:
    conf = basic_config(workdir)
    d = start(Daemon(workdir, conf, args=("-P", "mda")))
    try:
        bad = send(d.port, ROOT, [ROOT], "Subject: bad\n\nx\n")
        good = send(d.port, ROOT, [ROOT], "Subject: good\n\nx\n")
        assert d.stop(signal.SIGTERM) == 0
    finally:
        d.kill_group()
    victim = _evpid_file(d.spool, bad)
    victim.write_bytes(garbage)

    d = Daemon(workdir, conf)
    start(d)
    try:
        line = d.wait_for(rf"message {bad} moved to corrupt", 10)
        assert "warn" in line or "queue" in line
        files = wait_mails(d.maildir / "root", 1, 10)
        assert [read_mail(f)["Subject"] for f in files] == ["good"]
        assert good in files[0].read_text()
        wait_until("an empty queue", lambda: show_queue(d) == [] or None, 5)
        # moved, not deleted: the admin can inspect it, with the reason
        assert not (d.spool / "queue" / bad[:2] / bad).exists()
        kept = {p.name: p for p in (d.spool / "corrupt").rglob("*") if p.is_file()}
        assert victim.name in kept and "message" in kept, sorted(kept)
        assert kept[victim.name].read_bytes() == garbage
        assert b"Subject: bad" in kept["message"].read_bytes()
        status = d.smtpctl("show", "status")
        assert status.returncode == 0 and "MDA running" in status.stdout
        assert d.proc is not None and d.proc.poll() is None
    finally:
        d.kill_group()


def test_empty_message_dir_removed_at_start(workdir: Path) -> None:
    conf = basic_config(workdir)
    d = start(Daemon(workdir, conf))
    d.stop(signal.SIGTERM)
    # what the crash test sees after SIGKILL between unlink and rmdir
    leftover = d.spool / "queue" / "6a" / "6adc1a36"
    leftover.mkdir(parents=True)
    owner = (d.spool / "queue").stat()
    for path in (leftover.parent, leftover):   # as the queue user would have made them
        os.chown(path, owner.st_uid, owner.st_gid)
    d = Daemon(workdir, conf)
    start(d)
    try:
        d.wait_for(QUEUE_LIVE)
        assert not leftover.exists()
    finally:
        d.kill_group()


def test_uncorrupt_and_discover(workdir: Path) -> None:
    """An administrator repairs a message moved aside and puts it back with
    `smtpctl uncorrupt`; `smtpctl discover` loads envelopes copied in by hand."""
    conf = basic_config(workdir)
    d = start(Daemon(workdir, conf, args=("-P", "mda")))
    msgid = send(d.port, ROOT, [ROOT], "Subject: repaired\n\nbody\n")
    d.stop(signal.SIGTERM)
    victim = _evpid_file(d.spool, msgid)
    good = victim.read_bytes()
    victim.write_bytes(b"\x00garbage\n")
    d = start(Daemon(workdir, conf, args=("-P", "mda")))
    try:
        d.wait_for(r"moved to corrupt")
        assert show_queue(d) == []
        still = d.smtpctl("uncorrupt", msgid)
        assert still.returncode == 1 and "still corrupt" in still.stderr
        (kept,) = [p for p in (d.spool / "corrupt").rglob(victim.name)]
        kept.write_bytes(good)                       # the administrator's repair
        out = d.smtpctl("uncorrupt", msgid)
        assert (out.returncode, out.stdout.strip()) == (0, "command succeeded")
        assert [q.msgid for q in show_queue(d)] == [msgid]
        assert d.smtpctl("uncorrupt", msgid).returncode == 1   # nothing left aside
        # discover: the scheduler already knows it, the queue reloads it anyway
        found = d.smtpctl("discover", msgid)
        assert (found.returncode, found.stdout.strip()) == (0, "1 envelope discovered")
        assert len(show_queue(d)) == 1
        assert d.smtpctl("resume", "mda").returncode == 0
        (mail,) = wait_mails(d.maildir / "root", 1, 15)
        assert read_mail(mail)["Subject"] == "repaired"
    finally:
        d.kill_group()
