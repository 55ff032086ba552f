"""Disk faults while receiving (issue 10 §2): EIO and ENOSPC become 451 and
452 to the client, nothing is half-committed, the session and the daemon go
on.  Faults come from the smtp process's test-only hook
(PYSMTPD_TEST_FAULTS, no LD_PRELOAD) and from a real, full tmpfs spool."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon, temp_workdir

SMALL = b"Subject: small\r\n\r\nhello\r\n"
BIG = b"Subject: big\r\n\r\n" + (b"0123456789abcdef" * 4 + b"\r\n") * 16384 + b"\r\n"  # 1 MiB


def committed(d: Daemon) -> list[Path]:
    return sorted((d.spool / "queue").glob("*/*/message"))


def incoming_empty(d: Daemon, timeout: float = 5.0) -> bool:
    """Rollback is asynchronous (an imsg to the queue): wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any((d.spool / "incoming").iterdir()):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = temp_workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(("name", "code", "status"), [
    ("EIO", 451, b"4.3.0"),
    ("ENOSPC", 452, b"4.3.1"),
])
def test_write_fault_while_receiving(workdir: Path, name: str, code: int,
                                     status: bytes) -> None:
    d = Daemon(workdir, basic_config(workdir), args=("-P", "mda"),
               env={"PYSMTPD_TEST_FAULTS": f"smtp.write={name}:4096"})
    try:
        d.start()
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.sendmail("a@example.com", ["root"], SMALL)   # under the fault offset
            assert len(committed(d)) == 1
            with pytest.raises(smtplib.SMTPDataError) as failed:
                s.sendmail("a@example.com", ["root"], BIG)
            assert failed.value.smtp_code == code
            text: object = failed.value.smtp_error  # bytes, whatever typeshed says
            assert isinstance(text, bytes) and text.startswith(status)
            # the session goes on after the failed transaction
            assert s.noop()[0] == 250
            s.sendmail("a@example.com", ["root"], SMALL)
        assert len(committed(d)) == 2          # nothing of the failed message
        assert incoming_empty(d)
        d.wait_for("smtp: message write failed: " + os.strerror(getattr(errno, name)), 5)
        assert "Traceback" not in d.log_text()
    finally:
        d.kill_group()


def fill(path: Path, leave: int) -> Path:
    """Allocate all but `leave` bytes of the file system at path."""
    st = os.statvfs(path)
    filler = path / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(0, st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.fixture
def tmpfs_spool(workdir: Path) -> Iterator[Path]:
    spool = workdir / "spool"
    spool.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs spool needs root")
    # 72 MiB: just above the queue's 64 MiB free-space threshold
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=72m,mode=0711", "tmpfs",
                           str(spool)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def test_full_spool_gives_452_and_commits_nothing(workdir: Path, tmpfs_spool: Path) -> None:
    d = Daemon(workdir, basic_config(workdir), args=("-P", "mda"))
    filler: Path | None = None
    try:
        d.start()
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
            s.sendmail("a@example.com", ["root"], SMALL)
            # the transaction starts while there is room, the disk fills up
            # under it, then DATA runs into ENOSPC
            assert s.mail("a@example.com")[0] == 250
            assert s.rcpt("root")[0] == 250
            filler = fill(tmpfs_spool, 256 * 1024)
            code, text = s.data(BIG)
            assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
            assert len(committed(d)) == 1
            assert incoming_empty(d)
            # below the free-space threshold new mail is refused at MAIL
            code, text = s.mail("a@example.com")
            assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
            d.wait_for("queue: refusing new messages", 5)
            s.rset()
            filler.unlink()
            filler = None
            s.sendmail("a@example.com", ["root"], BIG)
        assert len(committed(d)) == 2
        # what was accepted is whole
        assert all(p.stat().st_size > 0 for p in committed(d))
        assert d.proc is not None and d.proc.poll() is None
        assert "Traceback" not in d.log_text()
    finally:
        d.kill_group()
        if filler is not None:
            with contextlib.suppress(OSError):
                filler.unlink()
