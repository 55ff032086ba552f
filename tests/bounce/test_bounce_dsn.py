from __future__ import annotations

import email
import email.policy
import io
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from smtpd.bounce import (
    DsnKind,
    DsnRecipient,
    DsnRet,
    build_dsn,
    duration,
    rfc5322_date,
    write_dsn,
)

ORIG = (
    b"Received: from client.test (localhost [127.0.0.1])\n"
    b"\tby vm (pysmtpd) with ESMTP id 51e7b466\n"
    b"Subject: original subject\n"
    b"Message-ID: <abc@client.test>\n"
    b"\n"
    b"the secret body\n"
    b"From line in body\n"
)
NOW = datetime(2026, 11, 27, 10, 8, 18, tzinfo=UTC)
ARRIVAL = datetime(2026, 11, 27, 10, 8, 10, tzinfo=UTC)
RCPT = DsnRecipient(
    final_rcpt="rcpt@remote.test",
    orig_rcpt="alias@local.test",
    status="5.1.1",
    diagnostic="550 5.1.1 <rcpt@remote.test>: Recipient address rejected",
    remote_mta="mx.remote.test",
)


def _parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _build(**kw: object) -> bytes:
    args: dict[str, object] = dict(
        kind=DsnKind.FAILED,
        reporting_mta="vm.test",
        sender="a@b.test",
        recipients=[RCPT],
        original=io.BytesIO(ORIG),
        envid="ENV123",
        arrival_date=ARRIVAL,
        now=NOW,
        boundary="1234567890123456/vm.test",
        message_id="<dsn1@vm.test>",
    )
    args.update(kw)
    return build_dsn(**args)  # type: ignore[arg-type]


def test_failed_structure() -> None:
    data = _build()
    msg = _parse(data)
    assert msg["Subject"] == "Delivery status notification: failed"
    assert msg["From"] == "Mailer Daemon <MAILER-DAEMON@vm.test>"
    assert msg["To"] == "a@b.test"
    assert b"\nDate: Fri, 27 Nov 2026 10:08:18 +0000 (UTC)\n" in data
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    text = parts[0].get_content()
    assert text.startswith("This is the MAILER-DAEMON, please DO NOT REPLY to this email.\n")
    assert "rcpt@remote.test: 550 5.1.1 <rcpt@remote.test>: Recipient address rejected" in text
    # message/delivery-status: per-message block then per-recipient blocks
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list) and len(blocks) == 2
    assert blocks[0]["Reporting-MTA"] == "dns; vm.test"
    assert blocks[0]["Original-Envelope-Id"] == "ENV123"
    assert b"\nArrival-Date: Fri, 27 Nov 2026 10:08:10 +0000 (UTC)\n" in data
    r = blocks[1]
    assert r["Final-Recipient"] == "rfc822; rcpt@remote.test"
    assert r["Original-Recipient"] == "rfc822; alias@local.test"
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert r["Remote-MTA"] == "dns; mx.remote.test"
    assert r["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    # RET=HDRS: headers only, the body never leaves
    headers = parts[2].get_payload()
    assert isinstance(headers, str)
    assert "Subject: original subject" in headers and "Message-ID: <abc@client.test>" in headers
    assert b"the secret body" not in data
    assert data.endswith(b"\n--1234567890123456/vm.test--\n")
    assert b"\r" not in data


def test_full_returns_message_rfc822() -> None:
    data = _build(ret=DsnRet.FULL)
    parts = list(_parse(data).iter_parts())
    assert parts[2].get_content_type() == "message/rfc822"
    inner = parts[2].get_payload()[0]
    assert inner["Subject"] == "original subject"
    assert inner.get_payload() == "the secret body\nFrom line in body\n"
    assert ORIG in data  # byte for byte


def test_multiple_recipients_and_no_orcpt() -> None:
    r2 = DsnRecipient("other@remote.test", None, "5.2.2", None, "552 5.2.2 Mailbox full")
    parts = list(_parse(_build(recipients=[RCPT, r2])).iter_parts())
    blocks = parts[1].get_payload()
    assert len(blocks) == 3
    assert blocks[2]["Final-Recipient"] == "rfc822; other@remote.test"
    assert blocks[2]["Original-Recipient"] is None
    assert blocks[2]["Status"] == "5.2.2"
    assert "other@remote.test: 552 5.2.2 Mailbox full" in parts[0].get_content()


def test_delayed() -> None:
    r = DsnRecipient("x@y.test", status="4.4.7", diagnostic="Envelope expired")
    data = _build(kind=DsnKind.DELAYED, recipients=[r], delay=4 * 3600, ttl=4 * 86400)
    msg = _parse(data)
    assert msg["Subject"] == "Delivery status notification: delayed"
    parts = list(msg.iter_parts())
    text = parts[0].get_content()
    assert "delayed for more than 4 hours" in text and "up to 4 days" in text
    blocks = parts[1].get_payload()
    assert blocks[1]["Action"] == "delayed" and blocks[1]["Status"] == "4.4.7"


@pytest.mark.parametrize(
    ("kind", "word"), [(DsnKind.RELAYED, "relayed"), (DsnKind.DELIVERED, "successfully")]
)
def test_success_kinds(kind: DsnKind, word: str) -> None:
    r = DsnRecipient("x@y.test", status="2.0.0")
    parts = list(_parse(_build(kind=kind, recipients=[r])).iter_parts())
    assert word in parts[0].get_content()
    assert parts[1].get_payload()[1]["Action"] == kind.value
    assert parts[1].get_payload()[1]["Last-Attempt-Date"] is None


def test_crlf_output() -> None:
    data = _build(newline=b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert _parse(data)["Subject"] == "Delivery status notification: failed"


def test_streams_a_large_original() -> None:
    big = ORIG + b"x" * 1000 + b"\n" * 3_000_000
    out = io.BytesIO()
    src = io.BytesIO(big)
    write_dsn(out, DsnKind.FAILED, "vm.test", "a@b.test", [RCPT], src, DsnRet.HDRS, now=NOW)
    assert src.tell() < 1000  # stopped at the end of the header block
    assert len(out.getvalue()) < 4000


def test_header_injection_and_bad_input_refused() -> None:
    r = DsnRecipient("x@y.test\nBcc: evil@x", status="5.0.0", diagnostic="550 a\r\nX-Evil: 1")
    data = _build(recipients=[r])
    msg = _parse(data)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    blocks = list(msg.iter_parts())[1].get_payload()
    assert blocks[1]["X-Evil"] is None and blocks[1]["Bcc"] is None
    with pytest.raises(ValueError):
        _build(sender="")
    with pytest.raises(ValueError):
        _build(sender="a@b\nBcc: x")
    with pytest.raises(ValueError):
        _build(recipients=[DsnRecipient("x@y", status="9.9")])
    with pytest.raises(ValueError):
        _build(recipients=[])


def test_original_without_final_newline() -> None:
    data = _build(ret=DsnRet.FULL, original=io.BytesIO(b"Subject: s\n\nno newline"))
    assert b"no newline\n\n--1234567890123456/vm.test--\n" in data


def test_helpers() -> None:
    assert duration(1) == "1 second" and duration(59) == "59 seconds"
    assert duration(60) == "1 minute" and duration(7200) == "2 hours"
    assert duration(86400 * 4) == "4 days"
    assert rfc5322_date(NOW) == "Fri, 27 Nov 2026 10:08:18 +0000 (UTC)"


def test_default_boundary_and_id_are_random() -> None:
    a = build_dsn(DsnKind.FAILED, "h", "a@b", [RCPT], io.BytesIO(ORIG), now=NOW)
    b = build_dsn(DsnKind.FAILED, "h", "a@b", [RCPT], io.BytesIO(ORIG), now=NOW)
    assert a != b
    assert _parse(a).get_boundary() != _parse(b).get_boundary()


def test_hdrs_stops_at_first_non_header_line() -> None:
    orig = b"Subject: s\n\tcontinued\nthis is body without blank line\nmore body\n"
    data = _build(original=io.BytesIO(orig))
    assert b"Subject: s\n\tcontinued\n" in data
    assert b"this is body" not in data
