"""What every local delivery does to the message before writing it.

Upstream's mda process writes `Return-Path: <sender>` (absent for <>) and
`Delivered-To: <original rcpt>` in front of the spooled message for every
method (maildir, mbox, mda, lmtp), after refusing a delivery loop: an
existing `Delivered-To:` header equal to the final recipient
(mda.c mda_check_loop).  The header block is read once here, bounded, so
the junk test and the loop test need no second pass and no seek.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from smtpd.mda.types import DeliveryRequest, DeliveryResult, permfail

CHUNK = 64 * 1024
HEADER_SCAN_LIMIT = 256 * 1024  # bytes of header scanned for X-Spam / loops
_JUNK_LINES = (b"x-spam: yes", b"x-spam-flag: yes")


@dataclass(frozen=True, slots=True)
class Prepared:
    """`prefix` is written first, then the rest of the source file."""

    prefix: bytes
    is_spam: bool


def _bad(value: str) -> bool:
    return any(c in value for c in "\r\n\0")


def check_request(req: DeliveryRequest) -> DeliveryResult | None:
    """Refuse envelope values that would break the headers we write.

    The privileged side validates addresses too (DESIGN.md §4, CVE-2020-7247
    and CVE-2020-8794); this is the last line before a file or a process.
    """
    for name in ("sender", "rcpt", "orig_rcpt", "user"):
        if _bad(getattr(req, name)):
            return permfail(f"550 5.1.3 Invalid {name}: control character in address")
    return None


def delivery_headers(req: DeliveryRequest) -> bytes:
    """Return-Path (absent for <>) and Delivered-To, as upstream's mda.c."""
    out = b""
    if req.sender:
        out += b"Return-Path: <" + req.sender.encode("utf-8", "surrogateescape") + b">\n"
    dt = req.orig_rcpt or req.rcpt
    out += b"Delivered-To: " + dt.encode("utf-8", "surrogateescape") + b"\n"
    return out


def prepare(req: DeliveryRequest, source: BinaryIO) -> Prepared | DeliveryResult:
    """Read the header block; refuse a loop; return what to write first."""
    bad = check_request(req)
    if bad is not None:
        return bad
    head: list[bytes] = []
    size = 0
    is_spam = False
    in_fields = True  # upstream's loop check stops at the first non-header line
    final = req.rcpt.lower().encode("utf-8", "surrogateescape")
    while size < HEADER_SCAN_LIMIT:
        line = source.readline(HEADER_SCAN_LIMIT - size)
        if not line:
            break
        head.append(line)
        size += len(line)
        text = line.rstrip(b"\n")
        if not text:
            break  # end of headers
        if text.lower() in _JUNK_LINES:
            is_spam = True
        if in_fields and b":" not in text and text[:1] not in (b" ", b"\t"):
            in_fields = False
        if in_fields and text[:14].lower() == b"delivered-to: " and text[14:].lower() == final:
            return permfail("550 5.4.6 Loop detected", None)
    return Prepared(delivery_headers(req) + b"".join(head), is_spam)


def chunks(prefix: bytes, source: BinaryIO) -> Iterator[bytes]:
    """The prefix then the rest of the source, in bounded chunks."""
    if prefix:
        yield prefix
    while True:
        data = source.read(CHUNK)
        if not data:
            return
        yield data


class NulTruncator:
    """Maildir output as upstream's mail.maildir writes it.

    mail.maildir reads lines with getline() and writes them with
    fprintf("%s\\n"): a NUL byte ends the line early (the rest of that line
    is lost) and a last line without a newline gets one (COMPAT.md).
    Lines without NUL pass through untouched, in whole chunks.
    """

    def __init__(self) -> None:
        self._dropping = False  # inside a line after a NUL
        self._last = b"\n"  # last byte emitted

    def feed(self, data: bytes) -> bytes:
        if not self._dropping and b"\0" not in data:
            if data:
                self._last = data[-1:]
            return data
        out = bytearray()
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            end = len(data) if nl == -1 else nl + 1
            segment = data[pos:end]
            if self._dropping:
                if nl != -1:
                    out += b"\n"
                    self._dropping = False
            else:
                nul = segment.find(b"\0")
                if nul == -1:
                    out += segment
                else:
                    out += segment[:nul]
                    if nl != -1:
                        out += b"\n"
                    else:
                        self._dropping = True
            pos = end
        if out:
            self._last = bytes(out[-1:])
        return bytes(out)

    def close(self) -> bytes:
        """What must follow the last fed byte: a final newline if missing."""
        if self._dropping or self._last != b"\n":
            self._dropping = False
            self._last = b"\n"
            return b"\n"
        return b""
