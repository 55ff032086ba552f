"""sendmail's sans-IO core (smtpctl.enqueue) and argument handling
(smtpctl.sendmail), without a daemon."""

from __future__ import annotations

import io
import os
import pwd
import quopri
from pathlib import Path

import pytest

from smtpctl.enqueue import Added, AddressError, data_lines, qp_encode, scan
from smtpctl.localconf import Local
from smtpctl.sendmail import (
    Identity,
    Mode,
    Opts,
    UsageError,
    envelope_sender,
    gecos_name,
    getopt,
    parse_args,
    recipients,
    run_offline,
    send,
    write_offline,
)

ADDED = Added("me@host.test", "Me", "Fri, 27 Nov 2026 12:00:00 +0000")


def lines(text: str) -> list[bytes]:
    return [line.encode() for line in text.splitlines(keepends=True)]


@pytest.mark.parametrize(("header", "want"), [
    ("To: a@x.test\n", ["a@x.test"]),
    ("To: A <a@x.test>, \"B, Jr\" <b@x.test>\n", ["a@x.test", "b@x.test"]),
    ("To: a@x.test (Alice), b@x.test; c@x.test\n", ["a@x.test", "b@x.test", "c@x.test"]),
    ("To: team: a@x.test, b@x.test;\n", ["a@x.test", "b@x.test"]),
    ("To: a@x.test,\n b@x.test,\n\tc@x.test\n", ["a@x.test", "b@x.test", "c@x.test"]),
    ("To: Alice\n <a@x.test>\n", ["a@x.test"]),
    ("CC: <a@x.test>\n", ["a@x.test"]),
    ("To: undisclosed-recipients:;\n", []),
])
def test_recipients_from_headers(header: str, want: list[str]) -> None:
    s = scan(lines(header + "Subject: s\n\nbody\n"), tflag=True, get_from=True)
    assert s.rcpts == want


def test_without_t_headers_give_no_recipients() -> None:
    assert scan(lines("To: a@x.test\n\nx\n"), tflag=False, get_from=True).rcpts == []


def test_unbalanced_address_is_an_error() -> None:
    with pytest.raises(AddressError):
        scan(lines('To: "open quote <a@x.test>\n\nx\n'), tflag=True, get_from=True)


def test_bcc_and_its_continuations_are_removed() -> None:
    s = scan(lines("To: a@x.test\nBcc: b@x.test,\n c@x.test\nSubject: s\n\nBcc: body\n"),
             tflag=True, get_from=True)
    assert s.rcpts == ["a@x.test", "b@x.test", "c@x.test"]
    assert b"".join(s.lines) == b"To: a@x.test\nSubject: s\n\nBcc: body\n"


def test_from_header_is_the_sender_unless_f() -> None:
    s = scan(lines("From: Bob <bob@x.test>\n\nx\n"), tflag=False, get_from=True)
    who = Identity("me", None)
    assert envelope_sender(Opts(), who, s, "host.test") == "bob@x.test"
    assert envelope_sender(Opts(fake_from="<>"), who, s, "host.test") == ""
    assert envelope_sender(Opts(fake_from="alice"), who, s, "host.test") == "alice@host.test"
    plain = scan(lines("Subject: x\n\nx\n"), tflag=False, get_from=True)
    assert envelope_sender(Opts(), who, plain, "host.test") == "me@host.test"
    with pytest.raises(UsageError):
        envelope_sender(Opts(fake_from="<a@b"), who, s, "host.test")


def test_recipients_are_split_and_qualified() -> None:
    s = scan(lines("To: c\n\nx\n"), tflag=True, get_from=True)
    assert recipients(Opts(rcpts=["a,b@y.test"]), s, "h.test") == [
        "a@h.test", "b@y.test", "c@h.test"]


def test_data_adds_missing_from_and_date_and_stuffs_dots() -> None:
    s = scan(lines("Subject: s\r\n\r\n.\r\n..x\r\nend"), tflag=False, get_from=True)
    out = b"".join(data_lines(s, ADDED))
    assert out == (b"From: Me <me@host.test>\r\nDate: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
                   b"Subject: s\r\n\r\n..\r\n...x\r\nend\r\n")


def test_data_keeps_present_headers_and_drops_from_line_and_return_path() -> None:
    text = ("From alice Fri Nov 27 12:00:00 2026\nReturn-Path: <evil@x.test>\n"
            "From: a@x.test\nDate: yesterday\n\nFrom me, in the body\n")
    s = scan(lines(text), tflag=False, get_from=True)
    out = b"".join(data_lines(s, ADDED))
    assert out == (b"From: a@x.test\r\nDate: yesterday\r\n\r\nFrom me, in the body\r\n")


def test_headerless_message_gets_a_separator() -> None:
    s = scan(lines("just text\n"), tflag=False, get_from=True)
    assert s.noheader
    out = b"".join(data_lines(s, ADDED)).split(b"\r\n")
    assert out[2:] == [b"", b"just text", b""]


def test_long_lines_become_quoted_printable() -> None:
    long = "." + "a" * 1200 + " "
    s = scan(lines(f"Subject: s\n\n{long}\n"), tflag=False, get_from=True)
    assert s.need_linesplit
    out = b"".join(data_lines(s, ADDED)).decode()
    assert "MIME-Version: 1.0\r\n" in out and "Content-Transfer-Encoding: quoted-printable" in out
    body = out.split("\r\n\r\n", 1)[1]
    assert body.startswith("..a")  # a leading dot is stuffed
    # what the server stores once it removes the stuffing (RFC 5321 4.5.2)
    stored = [line[1:] if line.startswith(".") else line for line in body.split("\r\n")]
    assert all(len(line) <= 76 for line in stored)
    assert quopri.decodestring("\n".join(stored).encode()).decode().rstrip("\n") == long


def test_qp_encodes_trailing_space_and_8bit() -> None:
    assert qp_encode("é x ".encode()) == b"=C3=A9 x=20\r\n"


def test_getopt_is_gnu_style() -> None:
    opts, operands = getopt(["a@x", "-t", "-fme", "-oi", "-Eopt", "-E", "b", "--", "-c"])
    assert opts == [("t", None), ("f", "me"), ("o", "i"), ("E", "opt"), ("E", None)]
    assert operands == ["a@x", "b", "-c"]
    with pytest.raises(UsageError):
        getopt(["-Z"])
    with pytest.raises(UsageError):
        getopt(["-f"])


def test_modes_and_ignored_flags() -> None:
    assert parse_args(["-bs"]).mode is Mode.SMTP
    assert parse_args(["-bp"]).mode is Mode.QUEUE
    assert parse_args(["-bi"]).mode is Mode.ALIASES
    o = parse_args(["-bm", "-odb", "-B", "8BITMIME", "-m", "-x", "-i", "-t", "r@x"])
    assert (o.mode, o.tflag, o.rcpts) == (Mode.SEND, True, ["r@x"])
    assert parse_args(["-q"]).quit_now


def test_gecos_name() -> None:
    pw = pwd.struct_passwd(("bob", "x", 1, 1, "& Smith,Room 1,,", "/h", "/bin/sh"))
    assert gecos_name(pw) == "Bob Smith"


def test_write_offline_refuses_pipes_and_writes_complete_files(tmp_path: Path) -> None:
    err = io.StringIO()
    s = scan(lines("To: a@x\n\nbody\n"), tflag=True, get_from=True)
    assert write_offline(str(tmp_path), ["-t", "a|b"], [], s, "D", err) == os.EX_SOFTWARE
    assert "illegal character" in err.getvalue()
    assert write_offline(str(tmp_path), ["-t"], lines("To: a@x\n\nbody\n"), s, "D",
                         err) == os.EX_TEMPFAIL
    (f,) = list(tmp_path.iterdir())
    assert not f.name.startswith(".")
    assert f.read_bytes() == b"-t\nDate: D\nTo: a@x\n\nbody\n"
    assert f.stat().st_mode & 0o777 == 0o600
    missing = tmp_path / "nope"
    assert write_offline(str(missing), ["-t"], [], s, "D", err) == os.EX_UNAVAILABLE


def test_replay_without_daemon_is_a_tempfail(tmp_path: Path) -> None:
    err = io.StringIO()
    code = run_offline(["a@x.test"], io.BytesIO(b"Subject: s\n\nx\n"),
                       str(tmp_path / "no.sock"), "h.test", err)
    assert code == os.EX_TEMPFAIL
    assert run_offline(["-bs"], io.BytesIO(b""), "x", "h", err) == os.EX_USAGE


@pytest.mark.parametrize(("name", "header"), [
    ("Full Name", b"From: Full Name <me@host.test>\r\n"),
    ("Doe, John", b'From: "Doe, John" <me@host.test>\r\n'),
    ('Say "hi"', b'From: "Say \\"hi\\"" <me@host.test>\r\n'),
    ("Two\nLines", b"From: Two Lines <me@host.test>\r\n"),
])
def test_display_name_is_quoted_and_single_line(name: str, header: bytes) -> None:
    s = scan(lines("Subject: s\n\nx\n"), tflag=False, get_from=True)
    added = Added("me@host.test", name, "D")
    assert next(data_lines(s, added)) == header


def test_line_breaks_never_reach_smtp_commands(tmp_path: Path) -> None:
    err = io.StringIO()
    o = parse_args(["-f", "a@x.test>\r\nRCPT TO:<evil@x.test", "r@x.test"])
    local = Local(str(tmp_path / "sock"), str(tmp_path), "h.test", None)
    code = send([], o, local, io.BytesIO(b"Subject: s\n\nx\n"), err, offline_ok=False)
    assert code == 1 and "line break" in err.getvalue()
