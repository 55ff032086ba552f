from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

import pytest
from mdatest_util import req_factory

from smtpd.mda import deliver
from smtpd.mda import maildir as maildir_module
from smtpd.mda.maildir import deliver_maildir, maildir_name
from smtpd.mda.message import NulTruncator
from smtpd.mda.types import DeliveryStatus

MSG = (
    b"Received: from client.test (localhost [127.0.0.1])\n"
    b"\tby vm (pysmtpd) with ESMTP id 51e7b466\n"
    b"Subject: hello\n"
    b"From: a@b.test\n"
    b"\n"
    b"body line 1\n"
    b".leading dot stays un-stuffed\n"
    b"From me, with \xc3\xa9 8bit bytes\n"
)


def _only(path: Path) -> Path:
    files = list(path.iterdir())
    assert len(files) == 1, files
    return files[0]


def test_content_byte_for_byte(tmp_path: Path) -> None:
    req = req_factory(tmp_path)()
    res = deliver_maildir(req, io.BytesIO(MSG))
    assert res.status is DeliveryStatus.OK, res
    assert res.text == "250 2.0.0 Delivered"
    md = tmp_path / "Maildir"
    f = _only(md / "new")
    assert f.name == res.detail
    assert f.read_bytes() == (b"Return-Path: <a@b.test>\nDelivered-To: acc1+tag@acc.test\n" + MSG)
    assert list((md / "tmp").iterdir()) == []
    assert list((md / "cur").iterdir()) == []
    for sub in ("", "new", "cur", "tmp"):
        assert stat.S_IMODE((md / sub).stat().st_mode) == 0o700
    assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_null_sender_has_no_return_path(tmp_path: Path) -> None:
    req = req_factory(tmp_path)(sender="")
    res = deliver(req, io.BytesIO(b"Subject: x\n\nbody\n"))
    assert res.status is DeliveryStatus.OK
    data = _only(tmp_path / "Maildir" / "new").read_bytes()
    assert data == b"Delivered-To: acc1+tag@acc.test\nSubject: x\n\nbody\n"


def test_name_format(tmp_path: Path) -> None:
    name = maildir_name("vm.test", now=1_700_000_000)
    assert re.fullmatch(r"1700000000\.[0-9a-f]{8}\.vm\.test", name)
    assert maildir_name("a/b:c").endswith(".a\\057b\\072c")
    names = {maildir_name("h") for _ in range(200)}
    assert len(names) == 200


def test_nul_truncates_rest_of_line_and_final_newline(tmp_path: Path) -> None:
    req = req_factory(tmp_path)(sender="")
    res = deliver_maildir(req, io.BytesIO(b"Subject: x\n\nab\0cd\nnext\nlast"))
    assert res.status is DeliveryStatus.OK
    data = _only(tmp_path / "Maildir" / "new").read_bytes()
    assert data.endswith(b"\n\nab\nnext\nlast\n")


@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_nul_truncator_any_chunking(step: int) -> None:
    src = b"a\0b\nc\0\0\0" + b"x" * 10 + b"\nplain\n\0tail"
    t = NulTruncator()
    out = b"".join(t.feed(src[i : i + step]) for i in range(0, len(src), step)) + t.close()
    assert out == b"a\nc\nplain\n\n"


def test_creates_missing_parents(tmp_path: Path) -> None:
    req = req_factory(tmp_path)(maildir=str(tmp_path / "deep" / "er" / "Maildir"))
    assert deliver_maildir(req, io.BytesIO(b"S: x\n\nb\n")).status is DeliveryStatus.OK
    assert len(list((tmp_path / "deep/er/Maildir/new").iterdir())) == 1


def test_default_maildir_is_home(tmp_path: Path) -> None:
    req = req_factory(tmp_path)(maildir="~/Mail/%{rcpt.user:strip}")
    assert deliver_maildir(req, io.BytesIO(b"S: x\n\nb\n")).status is DeliveryStatus.OK
    assert len(list((tmp_path / "Mail" / "acc1" / "new").iterdir())) == 1


@pytest.mark.parametrize("header", [b"X-Spam: yes", b"x-spam: YES", b"X-Spam-Flag: YES"])
def test_junk_goes_to_junk_folder(tmp_path: Path, header: bytes) -> None:
    req = req_factory(tmp_path)(junk=True)
    res = deliver_maildir(req, io.BytesIO(b"Subject: x\n" + header + b"\n\nbody\n"))
    assert res.status is DeliveryStatus.OK
    assert list((tmp_path / "Maildir" / "new").iterdir()) == []
    f = _only(tmp_path / "Maildir" / ".Junk" / "new")
    assert f.name == res.detail


def test_junk_only_in_headers_and_only_with_junk(tmp_path: Path) -> None:
    msg = b"Subject: x\n\nX-Spam: yes\n"
    req = req_factory(tmp_path)(junk=True)
    assert deliver_maildir(req, io.BytesIO(msg)).status is DeliveryStatus.OK
    assert len(list((tmp_path / "Maildir" / "new").iterdir())) == 1
    assert list((tmp_path / "Maildir" / ".Junk" / "new").iterdir()) == []
    req2 = req_factory(tmp_path)(junk=False, maildir=str(tmp_path / "M2"))
    spam = b"X-Spam: yes\n\nb\n"
    assert deliver_maildir(req2, io.BytesIO(spam)).status is DeliveryStatus.OK
    assert len(list((tmp_path / "M2" / "new").iterdir())) == 1
    assert not (tmp_path / "M2" / ".Junk").exists()


def test_subaddress_folder_only_if_it_exists(tmp_path: Path) -> None:
    make = req_factory(tmp_path)
    md = tmp_path / "Maildir"
    assert deliver_maildir(make(subaddress="lists"), io.BytesIO(b"S: 1\n\n")).status.name == "OK"
    assert len(list((md / "new").iterdir())) == 1
    (md / ".lists").mkdir()
    assert deliver_maildir(make(subaddress="lists"), io.BytesIO(b"S: 2\n\n")).status.name == "OK"
    assert len(list((md / ".lists" / "new").iterdir())) == 1
    # a tag cannot point outside: '/' is escaped, '..' refused
    res = deliver_maildir(make(subaddress="../x"), io.BytesIO(b"S: 3\n\n"))
    assert res.status is DeliveryStatus.OK
    assert len(list((md / "new").iterdir())) == 2


def test_expected_name_exactly_once(tmp_path: Path) -> None:
    make = req_factory(tmp_path)
    name = maildir_name("vm.test")
    r1 = deliver_maildir(make(), io.BytesIO(MSG), expected_name=name)
    assert r1.status is DeliveryStatus.OK and r1.detail == name
    # re-run after a "crash": nothing new is written
    r2 = deliver_maildir(make(), io.BytesIO(MSG), expected_name=name)
    assert r2.status is DeliveryStatus.OK and r2.detail == name
    assert len(list((tmp_path / "Maildir" / "new").iterdir())) == 1
    # a reader moved it to cur/ with flags: still found
    os.rename(tmp_path / "Maildir/new" / name, tmp_path / "Maildir/cur" / (name + ":2,S"))
    r3 = deliver_maildir(make(), io.BytesIO(MSG), expected_name=name)
    assert r3.status is DeliveryStatus.OK
    assert list((tmp_path / "Maildir" / "new").iterdir()) == []


def test_a_first_attempt_does_not_look_for_an_earlier_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_look(folders: list[str], name: str) -> str | None:
        raise AssertionError("cur/ read on a first attempt")

    monkeypatch.setattr(maildir_module, "find_delivered", no_look)
    name = maildir_name("vm.test")
    res = deliver_maildir(req_factory(tmp_path)(), io.BytesIO(MSG), expected_name=name,
                          check_existing=False)
    assert res.status is DeliveryStatus.OK and res.detail == name
    assert (tmp_path / "Maildir" / "new" / name).read_bytes().endswith(MSG)
    with pytest.raises(AssertionError, match="first attempt"):
        deliver_maildir(req_factory(tmp_path)(), io.BytesIO(MSG), expected_name=name)


def test_expected_name_after_crash_before_link(tmp_path: Path) -> None:
    make = req_factory(tmp_path)
    name = maildir_name("vm.test")
    md = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (md / sub).mkdir(parents=True)
    (md / "tmp" / name).write_bytes(b"half a mess")
    res = deliver_maildir(make(), io.BytesIO(MSG), expected_name=name)
    assert res.status is DeliveryStatus.OK
    assert (md / "new" / name).read_bytes().endswith(MSG)
    assert list((md / "tmp").iterdir()) == []


def test_bad_expected_name_refused(tmp_path: Path) -> None:
    res = deliver_maildir(req_factory(tmp_path)(), io.BytesIO(MSG), expected_name="../x")
    assert res.status is DeliveryStatus.PERMFAIL


def test_loop_detected(tmp_path: Path) -> None:
    msg = b"Delivered-To: ACC1@acc.test\nSubject: x\n\nb\n"
    res = deliver_maildir(req_factory(tmp_path)(), io.BytesIO(msg))
    assert res.status is DeliveryStatus.PERMFAIL
    assert res.text.startswith("550 5.4.6")
    assert not (tmp_path / "Maildir" / "new").exists() or not any(
        (tmp_path / "Maildir" / "new").iterdir()
    )


def test_path_escape_refused(tmp_path: Path) -> None:
    make = req_factory(tmp_path)
    req = make(maildir=str(tmp_path / "m" / "%{rcpt.user}"), orig_rcpt="..@x.test")
    res = deliver_maildir(req, io.BytesIO(MSG))
    assert res.status is DeliveryStatus.PERMFAIL
    req = make(maildir=str(tmp_path / "m" / "%{rcpt.user}"), orig_rcpt="a/../../b@x.test")
    res = deliver_maildir(req, io.BytesIO(MSG))
    assert res.status is DeliveryStatus.OK  # '/' escaped to ':' -> one component
    assert (tmp_path / "m" / "a:..:..:b" / "new").is_dir()


def test_header_injection_refused(tmp_path: Path) -> None:
    req = req_factory(tmp_path)(sender="a@b\nX-Evil: 1")
    assert deliver_maildir(req, io.BytesIO(MSG)).status is DeliveryStatus.PERMFAIL


def test_not_a_directory_is_tempfail(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    req = req_factory(tmp_path)(maildir=str(tmp_path / "file" / "Maildir"))
    res = deliver_maildir(req, io.BytesIO(MSG))
    assert res.status is DeliveryStatus.TEMPFAIL
    assert res.text.startswith("451 ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_is_tempfail_and_leaves_nothing(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (md / sub).mkdir(parents=True)
    (md / "tmp").chmod(0o500)
    try:
        res = deliver_maildir(req_factory(tmp_path)(), io.BytesIO(MSG))
    finally:
        (md / "tmp").chmod(0o700)
    assert res.status is DeliveryStatus.TEMPFAIL
    assert list((md / "new").iterdir()) == []


def test_enospc_is_tempfail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import smtpd.mda.maildir as m

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(m, "_write_all", full)
    res = deliver_maildir(req_factory(tmp_path)(), io.BytesIO(MSG))
    assert res.status is DeliveryStatus.TEMPFAIL
    assert res.text.startswith("452 4.3.1")
    assert list((tmp_path / "Maildir" / "tmp").iterdir()) == []
    assert list((tmp_path / "Maildir" / "new").iterdir()) == []


def test_large_message_streams(tmp_path: Path) -> None:
    body = b"".join(b"line %d .From x\n" % i for i in range(200_000))
    msg = b"Subject: big\n\n" + body
    res = deliver_maildir(req_factory(tmp_path)(sender=""), io.BytesIO(msg))
    assert res.status is DeliveryStatus.OK
    data = _only(tmp_path / "Maildir" / "new").read_bytes()
    assert data == b"Delivered-To: acc1+tag@acc.test\n" + msg
