"""RFC 3464 delivery status notifications in OpenSMTPD's shape.

The message has upstream's headers (`Subject: Delivery status
notification: <failed|delayed|relayed|delivered>`, `From: Mailer Daemon
<MAILER-DAEMON@host>`, To, Date) and parts (a text/plain notice, the
message/delivery-status report, the original).  Two deliberate choices:

- `Content-Type: multipart/report; report-type=delivery-status`
  (RFC 6522 §3) where 6.8 says multipart/mixed: mail readers then show
  the report as a bounce; one that does not know multipart/report treats
  it as multipart/mixed (RFC 2046 §5.1.7), so nothing is lost.
- RET=HDRS (the default) returns only the original header block in
  text/rfc822-headers (RFC 6522 §5); 6.8 puts the whole message there.
  RET=FULL returns it whole as message/rfc822.

The report also carries what upstream leaves out: Arrival-Date,
Original-Envelope-Id, Original-Recipient (ORCPT) and Diagnostic-Code.
The original is streamed in chunks: a huge message is never loaded.
Output uses LF line endings, as the spool stores messages, unless
`newline=b"\\r\\n"` is asked for.
"""

from __future__ import annotations

import email.utils
import io
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from smtpd.bounce.policy import DsnKind, DsnRet

CHUNK = 64 * 1024
_MAX_FIELD = 900  # keep generated lines well under RFC 5322's 998
MAX_HEADERS = 1024 * 1024  # RET=HDRS never copies more than this


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One per-recipient block (RFC 3464 §2.3)."""

    final_rcpt: str
    orig_rcpt: str | None = None  # ORCPT, when the client gave one
    status: str = "5.0.0"  # RFC 3463 code
    action: DsnKind | None = None  # default: the report's kind
    diagnostic: str = ""  # the reply text, e.g. "550 5.1.1 No such user"
    remote_mta: str | None = None


def rfc5322_date(dt: datetime) -> str:
    """`Fri, 27 Nov 2026 10:08:18 +0000 (UTC)`, as upstream's time_to_text."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    text = email.utils.format_datetime(dt)
    name = dt.tzname()
    return f"{text} ({name})" if name and name.isalpha() else text


def duration(seconds: int) -> str:
    """Upstream's bounce_duration: the largest whole unit."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


def _clean(text: str) -> str:
    """One header-safe line: no control characters, bounded length."""
    line = "".join(c if c.isprintable() else " " for c in text).strip()
    return line[:_MAX_FIELD]


def _status(code: str) -> str:
    parts = code.split(".")
    if len(parts) != 3 or not all(p.isdigit() and 0 < len(p) <= 3 for p in parts):
        raise ValueError(f"invalid DSN status code {code!r}")
    if parts[0] not in ("2", "4", "5"):
        raise ValueError(f"invalid DSN status class {code!r}")
    return code


def _notice(
    kind: DsnKind, recipients: Sequence[DsnRecipient], ret: DsnRet, delay: int, ttl: int | None
) -> str:
    lines = ["This is the MAILER-DAEMON, please DO NOT REPLY to this email.", ""]
    if kind is DsnKind.FAILED:
        lines += [
            "An error has occurred while attempting to deliver a message for",
            "the following list of recipients:",
        ]
    elif kind is DsnKind.DELAYED:
        lines += [
            f"A message is delayed for more than {duration(delay)} for the following",
            "list of recipients:",
        ]
    elif kind is DsnKind.RELAYED:
        lines.append("Your message was relayed to these recipients.")
    else:
        lines.append("Your message was successfully delivered to these recipients.")
    lines.append("")
    for r in recipients:
        lines.append(_clean(f"{r.final_rcpt}: {r.diagnostic}" if r.diagnostic else r.final_rcpt))
    lines.append("")
    if kind is DsnKind.DELAYED:
        lines += ["Please note that this is only a temporary failure report."]
        if ttl is not None:
            lines += [f"The message is kept in the queue for up to {duration(ttl)}."]
        lines += ["You DO NOT NEED to re-send the message to these recipients.", ""]
    if ret is DsnRet.FULL:
        lines.append("Below is a copy of the original message:")
    else:
        lines.append("Below are the headers of the original message:")
    lines.append("")
    return "\n".join(lines) + "\n"


def _report(
    kind: DsnKind,
    reporting_mta: str,
    recipients: Sequence[DsnRecipient],
    envid: str | None,
    arrival_date: datetime | None,
    now: datetime,
) -> str:
    # RFC 3464 §2.2 per-message fields, then §2.3 per-recipient blocks
    out = [f"Reporting-MTA: dns; {_clean(reporting_mta)}"]
    if envid:
        out.append(f"Original-Envelope-Id: {_clean(envid)}")
    if arrival_date is not None:
        out.append(f"Arrival-Date: {rfc5322_date(arrival_date)}")
    out.append("")
    for r in recipients:
        out.append(f"Final-Recipient: rfc822; {_clean(r.final_rcpt)}")
        if r.orig_rcpt:
            out.append(f"Original-Recipient: rfc822; {_clean(r.orig_rcpt)}")
        out.append(f"Action: {(r.action or kind).value}")
        out.append(f"Status: {_status(r.status)}")
        if r.remote_mta:
            out.append(f"Remote-MTA: dns; {_clean(r.remote_mta)}")
        if r.diagnostic:
            out.append(f"Diagnostic-Code: smtp; {_clean(r.diagnostic)}")
        if kind in (DsnKind.FAILED, DsnKind.DELAYED):
            out.append(f"Last-Attempt-Date: {rfc5322_date(now)}")
        out.append("")
    return "\n".join(out) + "\n"


class _Out:
    def __init__(self, out: BinaryIO, newline: bytes) -> None:
        self._out = out
        self._nl = newline
        self.last = b"\n"

    def raw(self, data: bytes) -> None:
        if not data:
            return
        self.last = data[-1:]
        if self._nl != b"\n":
            data = data.replace(b"\n", self._nl)
        self._out.write(data)

    def text(self, s: str) -> None:
        self.raw(s.encode("utf-8", "surrogateescape"))


def write_dsn(
    out: BinaryIO,
    kind: DsnKind,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[DsnRecipient],
    original: BinaryIO,
    ret: DsnRet = DsnRet.HDRS,
    envid: str | None = None,
    arrival_date: datetime | None = None,
    now: datetime | None = None,
    *,
    delay: int = 0,
    ttl: int | None = None,
    boundary: str | None = None,
    message_id: str | None = None,
    newline: bytes = b"\n",
) -> None:
    """Stream a DSN for `recipients` of `original` (spool bytes) to `out`.

    `sender` is the original envelope sender, the DSN's recipient: it
    must not be empty (see policy.should_bounce).  `delay`/`ttl` are the
    seconds shown in a delay warning.  `boundary` and `message_id` are
    generated unless given (tests pin them).
    """
    if not sender:
        raise ValueError("a DSN is never sent to the null sender")
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    if any(c in sender for c in "\r\n\0"):
        raise ValueError("control character in sender")
    now = now or datetime.now(UTC)
    host = _clean(reporting_mta)
    boundary = boundary or f"{secrets.randbits(63):016d}/{host}"
    message_id = message_id or f"<{secrets.token_hex(8)}@{host}>"
    report = _report(kind, host, recipients, envid, arrival_date, now)
    notice = _notice(kind, recipients, ret, delay, ttl)
    charset = "us-ascii" if notice.isascii() else "utf-8"
    w = _Out(out, newline)
    w.text(
        f"Subject: Delivery status notification: {kind.value}\n"
        f"From: Mailer Daemon <MAILER-DAEMON@{host}>\n"
        f"To: {sender}\n"
        f"Date: {rfc5322_date(now)}\n"
        f"Message-ID: {message_id}\n"
        "Auto-Submitted: auto-replied\n"  # RFC 3834 §5: no auto-reply to this
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=delivery-status;\n"
        f'\tboundary="{boundary}"\n'
        "\n"
        "This is a MIME-encapsulated message.\n"
        "\n"
        f"--{boundary}\n"
        "Content-Description: Notification\n"
        f"Content-Type: text/plain; charset={charset}\n"
        "\n"
        f"{notice}"
        f"--{boundary}\n"
        "Content-Description: Delivery Report\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        f"{report}"  # ends with the blank line that closes the last block
        f"--{boundary}\n"
    )
    if ret is DsnRet.FULL:
        w.text("Content-Description: Undelivered Message\nContent-Type: message/rfc822\n\n")
        while data := original.read(CHUNK):
            w.raw(data)
    else:
        w.text("Content-Description: Message headers\nContent-Type: text/rfc822-headers\n\n")
        copied = 0
        while copied < MAX_HEADERS and (line := original.readline(CHUNK)):
            if line in (b"\n", b"\r\n"):
                break  # end of the header block
            if b":" not in line and line[:1] not in (b" ", b"\t"):
                break  # not a header line: the body starts (RFC 5322 §2.1)
            w.raw(line)
            copied += len(line)
    if w.last != b"\n":
        w.raw(b"\n")
    w.text(f"\n--{boundary}--\n")


def build_dsn(
    kind: DsnKind,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[DsnRecipient],
    original: BinaryIO,
    ret: DsnRet = DsnRet.HDRS,
    envid: str | None = None,
    arrival_date: datetime | None = None,
    now: datetime | None = None,
    *,
    delay: int = 0,
    ttl: int | None = None,
    boundary: str | None = None,
    message_id: str | None = None,
    newline: bytes = b"\n",
) -> bytes:
    """`write_dsn` into memory (fine with RET=HDRS; stream FULL with write_dsn)."""
    buf = io.BytesIO()
    write_dsn(
        buf,
        kind,
        reporting_mta,
        sender,
        recipients,
        original,
        ret,
        envid,
        arrival_date,
        now,
        delay=delay,
        ttl=ttl,
        boundary=boundary,
        message_id=message_id,
        newline=newline,
    )
    return buf.getvalue()
