"""STARTTLS (RFC 3207) and AUTH PLAIN / LOGIN (RFC 4954) in the protocol."""

from __future__ import annotations

import pytest
from test_protocol_driver import Driver, b64

from smtpd.smtp import events as E
from smtpd.smtp.protocol import State

AUTH = {"auth_mechanisms": ("PLAIN", "LOGIN"), "tls_active": True}


def authed(script: bytes, sizes: list[int] | None = None, **kw: object) -> Driver:
    return Driver(**{**AUTH, **kw}).feed(b"EHLO c.test\r\n" + script, sizes)


def test_starttls_discards_injected_plaintext() -> None:
    d = Driver(starttls_available=True)
    d.tls_on_starttls = False
    d.feed(b"EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@d.test>\r\n")
    assert d.lines()[-1] == "220 2.0.0 Ready to start TLS"
    assert d.p.state is State.TLS
    d.feed(b"more injected bytes\r\n")  # arriving while the handshake runs
    d.p.start_tls_done()
    d.pump()
    assert not d.of(E.MailFrom)
    d.feed(b"MAIL FROM:<a@b.test>\r\n")
    # The session starts over: EHLO first (RFC 3207 §4.2).
    assert d.lines()[-1] == "503 5.5.1 Invalid command: Command not allowed at this point."
    d.feed(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n")
    assert d.lines()[-1] == "250 2.0.0 Ok"
    assert d.p.tls_active


def test_starttls_refusals() -> None:
    d = Driver(starttls_available=True).feed(b"STARTTLS\r\n")
    assert d.lines()[-1] == "503 5.5.1 Invalid command: Command not allowed at this point."
    d = Driver(starttls_available=True, tls_active=True).feed(b"EHLO c.test\r\nSTARTTLS\r\n")
    assert d.lines()[-1] == "503 5.5.1 Invalid command: Channel already secured"
    d = Driver(starttls_available=True).feed(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nSTARTTLS\r\n")
    assert d.lines()[-1] == "503 5.5.1 Invalid command: Command not allowed at this point."


@pytest.mark.parametrize("sizes", [None, [1] * 200])
def test_auth_plain_with_initial_response(sizes: list[int] | None) -> None:
    d = authed(f"AUTH PLAIN {b64(b'\0alice\0secret')}\r\n".encode(), sizes)
    creds = d.of(E.AuthCredentials)
    assert creds == [E.AuthCredentials("PLAIN", "alice", "secret", "")]
    assert d.lines()[-1] == "235 2.7.0 Authentication succeeded"
    assert d.p.authenticated
    assert d.p.last_command == "AUTH PLAIN ********"
    assert "secret" not in repr(creds[0])


def test_auth_plain_with_challenge_and_authzid() -> None:
    d = authed(b"AUTH PLAIN\r\n" + b64(b"admin\0alice\0secret").encode() + b"\r\n")
    assert d.lines()[-2:] == ["334 ", "235 2.7.0 Authentication succeeded"]
    assert d.of(E.AuthCredentials) == [E.AuthCredentials("PLAIN", "alice", "secret", "admin")]
    assert d.p.last_command == "********"


def test_auth_login_both_ways() -> None:
    d = authed(b"AUTH LOGIN\r\n" + f"{b64('alice')}\r\n{b64('secret')}\r\n".encode())
    assert d.lines()[-3:] == [
        "334 VXNlcm5hbWU6",
        "334 UGFzc3dvcmQ6",
        "235 2.7.0 Authentication succeeded",
    ]
    d = authed(f"AUTH LOGIN {b64('alice')}\r\n{b64('wrong')}\r\nMAIL FROM:<a@b.test>\r\n".encode())
    assert d.lines()[-3:] == ["334 UGFzc3dvcmQ6", "535 5.7.8 Authentication failed", "250 2.0.0 Ok"]
    assert not d.p.authenticated


@pytest.mark.parametrize(
    "script, expected",
    [
        (b"AUTH PLAIN\r\n*\r\n", "501 5.7.0 Authentication cancelled"),
        (b"AUTH LOGIN\r\n*\r\n", "501 5.7.0 Authentication cancelled"),
        (b"AUTH PLAIN !!!!\r\n", "501 5.5.2 Syntax error: Syntax error"),
        (
            b"AUTH PLAIN " + b64(b"nouser").encode() + b"\r\n",
            "501 5.5.2 Syntax error: Syntax error",
        ),
        (
            b"AUTH PLAIN " + b64(b"\0\xff\0pw").encode() + b"\r\n",
            "501 5.5.2 Syntax error: Syntax error",
        ),
        (
            b"AUTH CRAM-MD5\r\n",
            '504 5.7.4 Security features not supported: AUTH method "CRAM-MD5" not supported',
        ),
        (b"AUTH\r\n", "501 5.5.4 Invalid command arguments: No parameters given"),
        (
            b"MAIL FROM:<a@b.test>\r\nAUTH PLAIN\r\n",
            "503 5.5.1 Invalid command: Command not allowed at this point.",
        ),
    ],
)
def test_auth_errors(script: bytes, expected: str) -> None:
    d = authed(script)
    assert d.lines()[-1] == expected
    assert d.p.state in (State.READY, State.MAIL)
    d.feed(b"NOOP\r\n")
    assert d.lines()[-1] == "250 2.0.0 Ok"


def test_auth_needs_tls_unless_the_listener_allows_it() -> None:
    d = Driver(auth_mechanisms=("PLAIN", "LOGIN")).feed(b"EHLO c.test\r\nAUTH PLAIN\r\n")
    assert not any(line.startswith("250-AUTH") for line in d.lines())
    assert d.lines()[-1] == "503 5.5.1 Invalid command: Command not supported"
    d = Driver(auth_mechanisms=("PLAIN",), auth_plaintext=True).feed(
        b"EHLO c.test\r\nAUTH PLAIN\r\n"
    )
    assert "250-AUTH PLAIN" in d.lines()
    assert d.lines()[-1] == "334 "


def test_no_second_auth_and_no_auth_keyword_after_success() -> None:
    d = authed(f"AUTH PLAIN {b64(b'\0alice\0secret')}\r\nAUTH PLAIN\r\nEHLO c.test\r\n".encode())
    assert "503 5.5.1 Invalid command: Already authenticated" in d.lines()
    assert not any(line.startswith("250-AUTH") for line in d.lines()[-6:])
    assert d.p.authenticated  # EHLO does not forget it


def test_empty_initial_response() -> None:
    d = authed(b"AUTH LOGIN =\r\n")
    assert d.lines()[-1] == "501 5.5.2 Syntax error: Syntax error"
