"""SMTPUTF8 on the relay side (RFC 6531 §3.4, RFC 6532 §3): UTF-8 addresses
or headers ask for SMTPUTF8; addresses are never downgraded."""

from __future__ import annotations

import io

from smtpd.mta.session import utf8_headers
from smtpd.mta.transfer import Recipient, Status
from tests.mta.sink import Sink, SinkConfig
from tests.mta.test_mta_session import config, relay_one, run, statuses

UTF8_HEAD = "Subject: ünïcode\nFrom: a@src.test\n\nbody\n".encode()
UTF8_BODY = "Subject: plain\n\nhéllo\n".encode()
LATIN1_HEAD = "Subject: caf\xe9\n\nbody\n".encode("latin-1")


def test_utf8_headers_scans_only_the_header_block() -> None:
    assert utf8_headers(io.BytesIO(UTF8_HEAD))
    assert not utf8_headers(io.BytesIO(UTF8_BODY))
    assert not utf8_headers(io.BytesIO(LATIN1_HEAD))
    assert not utf8_headers(io.BytesIO("\nSubject: ü\n".encode()))  # no headers at all
    fp = io.BytesIO(b"X: y\n" * 30000 + "Z: ü\n\n".encode())
    assert utf8_headers(fp) and fp.tell() == 0


def mail_line(smtputf8: bool, message: bytes, rcpt: str = "a@dest.test") -> tuple[str, Status]:
    sink = Sink(SinkConfig(smtputf8=smtputf8))
    result = run(sink, lambda port: relay_one(port, config(), message, [Recipient(1, rcpt)]))
    line = sink.messages[0].mail_line if sink.messages else ""
    return line, statuses(result)[0][1]


def test_utf8_headers_get_smtputf8_when_offered() -> None:
    line, status = mail_line(True, UTF8_HEAD)
    assert status is Status.OK and line.endswith(" BODY=8BITMIME SMTPUTF8")
    # a peer without SMTPUTF8 still gets it as 8BITMIME (no envelope flag)
    line, status = mail_line(False, UTF8_HEAD)
    assert status is Status.OK and "SMTPUTF8" not in line and "BODY=8BITMIME" in line


def test_body_or_latin1_headers_do_not_ask_for_smtputf8() -> None:
    for message in (UTF8_BODY, LATIN1_HEAD):
        line, status = mail_line(True, message)
        assert status is Status.OK and "SMTPUTF8" not in line


def test_utf8_address_never_downgraded() -> None:
    line, status = mail_line(True, UTF8_BODY, rcpt="dëst@dest.test")
    assert status is Status.OK and line.endswith(" SMTPUTF8")
    line, status = mail_line(False, UTF8_BODY, rcpt="dëst@dest.test")
    assert status is Status.PERMFAIL and line == ""
