from __future__ import annotations

import errno
import fcntl
import io
import mailbox
import os
import re
import threading
import time
from pathlib import Path

import pytest
from mdatest_util import req_factory

from smtpd.mda import deliver
from smtpd.mda.mbox import FromQuoter, deliver_mbox
from smtpd.mda.types import DeliveryMethod, DeliveryStatus

NOW = 1_795_000_000.0
MSG = (
    b"Subject: hi\n"
    b"\n"
    b"From the start\n"
    b">From quoted once\n"
    b">>From twice\n"
    b"Fromage is not quoted\n"
    b" From indented not quoted\n"
    b"last line without newline"
)


def test_from_line_quoting_and_layout(tmp_path: Path) -> None:
    req = req_factory(tmp_path)(method=DeliveryMethod.MBOX)
    res = deliver(req, io.BytesIO(MSG))
    assert res.status is DeliveryStatus.OK, res
    data = (tmp_path / "mbox").read_bytes()
    first, rest = data.split(b"\n", 1)
    assert re.fullmatch(
        rb"From a@b\.test [A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}", first
    ), first
    assert rest == (
        b"Return-Path: <a@b.test>\n"
        b"Delivered-To: acc1+tag@acc.test\n"
        b"Subject: hi\n"
        b"\n"
        b">From the start\n"
        b">>From quoted once\n"
        b">>>From twice\n"
        b"Fromage is not quoted\n"
        b" From indented not quoted\n"
        b"last line without newline\n"
        b"\n"
    )


def test_exact_from_line(tmp_path: Path) -> None:
    req = req_factory(tmp_path)(sender="")
    assert deliver_mbox(req, io.BytesIO(b"S: x\n\nb\n"), now=NOW).status is DeliveryStatus.OK
    first = (tmp_path / "mbox").read_bytes().split(b"\n", 1)[0]
    assert first == b"From MAILER-DAEMON " + time.asctime(time.localtime(NOW)).encode()


def test_appends_and_python_mailbox_reads_back(tmp_path: Path) -> None:
    make = req_factory(tmp_path)
    for i in range(3):
        body = b"Subject: m%d\n\nFrom here\nline\n" % i
        assert deliver_mbox(make(), io.BytesIO(body), now=NOW).status is DeliveryStatus.OK
    box = mailbox.mbox(str(tmp_path / "mbox"), create=False)
    msgs = list(box)
    assert [m["Subject"] for m in msgs] == ["m0", "m1", "m2"]
    assert all(m["Delivered-To"] == "acc1+tag@acc.test" for m in msgs)
    assert os.stat(tmp_path / "mbox").st_mode & 0o777 == 0o600
    assert not (tmp_path / "mbox.lock").exists()


@pytest.mark.parametrize("step", [1, 2, 3, 5, 64])
def test_quoter_any_chunking(step: int) -> None:
    src = b"From a\n>From b\nFro\nFrom\n>>>\n>Fromx\nx From y\n>>From "
    q = FromQuoter()
    out = b"".join(q.feed(src[i : i + step]) for i in range(0, len(src), step)) + q.close()
    assert out == b">From a\n>>From b\nFro\nFrom\n>>>\n>Fromx\nx From y\n>>>From \n"


def test_waits_for_fcntl_lock(tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    # A POSIX record lock from another process: fork a holder.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: hold the lock for 0.5 s
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            os.write(w, b"x")
            time.sleep(0.5)
        finally:
            os._exit(0)
    try:
        os.read(r, 1)
        t0 = time.monotonic()
        res = deliver_mbox(req_factory(tmp_path)(), io.BytesIO(b"S: x\n\nb\n"), now=NOW)
        waited = time.monotonic() - t0
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
        os.close(r)
        os.close(w)
    assert res.status is DeliveryStatus.OK
    assert waited >= 0.3


def test_lock_timeout_is_tempfail(tmp_path: Path) -> None:
    (tmp_path / "mbox.lock").write_text("123\n")
    res = deliver_mbox(
        req_factory(tmp_path)(), io.BytesIO(b"S: x\n\nb\n"), now=NOW, lock_timeout=0.2
    )
    assert res.status is DeliveryStatus.TEMPFAIL
    assert "dotlocked" in res.text
    assert (tmp_path / "mbox.lock").exists()  # not ours: left alone


def test_dotlock_released_then_taken(tmp_path: Path) -> None:
    lock = tmp_path / "mbox.lock"
    lock.write_text("1\n")
    threading.Timer(0.2, lock.unlink).start()
    res = deliver_mbox(req_factory(tmp_path)(), io.BytesIO(b"S: x\n\nb\n"), now=NOW)
    assert res.status is DeliveryStatus.OK
    assert not lock.exists()


def test_stale_dotlock_removed(tmp_path: Path) -> None:
    lock = tmp_path / "mbox.lock"
    lock.write_text("1\n")
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    res = deliver_mbox(req_factory(tmp_path)(), io.BytesIO(b"S: x\n\nb\n"), now=NOW)
    assert res.status is DeliveryStatus.OK


def test_failure_truncates_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import smtpd.mda.mbox as m

    make = req_factory(tmp_path)
    assert deliver_mbox(make(), io.BytesIO(b"S: 1\n\nb\n"), now=NOW).status is DeliveryStatus.OK
    before = (tmp_path / "mbox").read_bytes()
    real = m._write_all
    calls = []

    def failing(fd: int, data: bytes) -> None:
        calls.append(data)
        if len(calls) == 3:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        real(fd, data)

    monkeypatch.setattr(m, "_write_all", failing)
    res = deliver_mbox(make(), io.BytesIO(b"S: 2\n\n" + b"x" * 200_000), now=NOW)
    assert res.status is DeliveryStatus.TEMPFAIL
    assert res.text.startswith("452 4.2.2")
    assert (tmp_path / "mbox").read_bytes() == before


def test_symlink_refused(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"")
    (tmp_path / "mbox").symlink_to(tmp_path / "target")
    res = deliver_mbox(req_factory(tmp_path)(), io.BytesIO(b"S: x\n\nb\n"), now=NOW)
    assert res.status is not DeliveryStatus.OK
    assert (tmp_path / "target").read_bytes() == b""


def test_hardlinked_mbox_refused(tmp_path: Path) -> None:
    (tmp_path / "other").write_bytes(b"")
    os.link(tmp_path / "other", tmp_path / "mbox")
    res = deliver_mbox(req_factory(tmp_path)(), io.BytesIO(b"S: x\n\nb\n"), now=NOW)
    assert res.status is not DeliveryStatus.OK
    assert (tmp_path / "other").read_bytes() == b""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as mail.local")
def test_root_creates_mailbox_for_the_user(tmp_path: Path) -> None:
    req = req_factory(tmp_path)(uid=12345, gid=12346)
    assert deliver_mbox(req, io.BytesIO(b"S: x\n\nb\n"), now=NOW).status is DeliveryStatus.OK
    st = os.stat(tmp_path / "mbox")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (12345, 12346, 0o600)
    # a second delivery appends to the user's mailbox
    assert deliver_mbox(req, io.BytesIO(b"S: y\n\nb\n"), now=NOW).status is DeliveryStatus.OK
    # someone else's file at that path is refused, untouched
    other = req_factory(tmp_path)(uid=777, gid=777)
    before = (tmp_path / "mbox").read_bytes()
    assert deliver_mbox(other, io.BytesIO(b"S: z\n\nb\n"), now=NOW).status is not DeliveryStatus.OK
    assert (tmp_path / "mbox").read_bytes() == before
