"""What sendmail(8) does to a message before submitting it, as upstream's
enqueue.c: a sans-IO core with no sockets and no files of its own.

`scan()` reads the message once (CRLF becomes LF), drops Bcc: header lines,
collects recipients from To:/Cc:/Bcc: (with -t) and the sender from From:
(without -f), and notes which headers are present.  `data_lines()` then
yields what goes after DATA: the From:/Date: headers the message lacks
(RFC 5322 §3.6 requires both), MIME headers and quoted-printable lines for
a message with lines longer than SMTP allows (RFC 5321 §4.5.3.1.6), mbox
"From " and Return-Path: lines removed from the header (RFC 5321 §4.4: the
final MTA adds Return-Path), and dot-stuffing (RFC 5321 §4.5.2).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

LINESPLIT = 990  # upstream's limit: longer lines force quoted-printable
MAX_ADDRESS = 1000


class Header(enum.Enum):
    NONE = ""
    FROM = b"from:"
    TO = b"to:"
    CC = b"cc:"
    BCC = b"bcc:"
    SUBJECT = b"subject:"
    DATE = b"date:"
    MSGID = b"message-id:"
    MIME_VERSION = b"mime-version:"
    CONTENT_TYPE = b"content-type:"
    CONTENT_DISPOSITION = b"content-disposition:"
    CONTENT_TRANSFER_ENCODING = b"content-transfer-encoding:"
    USER_AGENT = b"user-agent:"


_KEYWORDS = [h for h in Header if h is not Header.NONE]
_WSP = (0x20, 0x09)


class AddressError(Exception):
    pass


@dataclass
class _AddrState:
    """The address scanner's state across header continuation lines."""

    quote: bool = False
    comment: int = 0
    esc: bool = False
    brackets: bool = False
    buf: bytearray = field(default_factory=bytearray)


class AddressScanner:
    """Splits To:/Cc:/Bcc:/From: values into bare addresses as enqueue.c's
    parse_addr(): comments dropped, the part in <> wins over a display
    name, groups ("name: a, b;") opened, commas and semicolons separate."""

    def __init__(self) -> None:
        self.state = _AddrState()
        self.found: list[str] = []

    def feed(self, line: bytes, continuation: bool) -> None:
        s = self.state
        pos, end = 0, len(line)
        if not continuation:
            # skip the field name up to its colon; the previous field is done
            while pos < end and line[pos] != 0x3A:
                pos += 1
            self.terminal()
        while pos < end:
            while pos < end and not s.quote and line[pos] in (*_WSP, 0x3A, 0x2C, 0x3B):
                pos += 1
            terminal = False
            while pos < end:
                c = line[pos]
                if not s.esc and not s.quote and c == 0x28:  # (
                    s.comment += 1
                if not s.comment and not s.esc and c == 0x22:  # "
                    s.quote = not s.quote
                if not s.comment and not s.quote and not s.esc:
                    if c == 0x3A:  # a group: what came before is its name
                        pos += 1
                        while pos < end and line[pos] in _WSP:
                            pos += 1
                        s.buf.clear()
                        if pos >= end:
                            break
                        c = line[pos]
                    if c in (0x0A, 0x0D):
                        break
                    if c in (0x2C, 0x3B):  # , ;
                        terminal = True
                        break
                    if c == 0x3C:  # <
                        s.brackets = True
                        s.buf.clear()
                    if s.brackets and c == 0x3E:  # >
                        terminal = True
                if not s.comment and not terminal and (
                        s.quote or s.esc or c not in (0x3C, *_WSP)):
                    if len(s.buf) >= MAX_ADDRESS:
                        raise AddressError("address exceeds buffer size")
                    s.buf.append(c)
                if not s.quote and s.comment and c == 0x29:  # )
                    s.comment -= 1
                s.esc = not s.esc and not s.comment and c == 0x5C  # backslash
                pos += 1
            if terminal:
                self.terminal()
            while pos < end and line[pos] in (0x0A, 0x0D):
                pos += 1
            if terminal:
                pos += 1 if pos < end and line[pos] in (0x2C, 0x3B) else 0

    def terminal(self) -> None:
        s = self.state
        if s.comment or s.quote or s.esc:
            raise AddressError("syntax error in address")
        if s.buf:
            addr = bytes(s.buf).decode("utf-8", "surrogateescape")
            if addr:
                self.found.append(addr)
            s.buf.clear()
        s.brackets = False


@dataclass
class Scan:
    """What scan() learned; lines is the message to send (Bcc: removed)."""

    lines: list[bytes] = field(default_factory=list)
    rcpts: list[str] = field(default_factory=list)
    header_from: str | None = None
    saw_from: bool = False
    saw_date: bool = False
    saw_msgid: bool = False
    saw_mime_version: bool = False
    saw_content_type: bool = False
    saw_content_disposition: bool = False
    saw_content_transfer_encoding: bool = False
    need_linesplit: bool = False
    noheader: bool = True


def normalize(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        line = line[:-2] + b"\n"
    return line if line.endswith(b"\n") else line + b"\n"


def scan(source: Iterable[bytes], tflag: bool, get_from: bool) -> Scan:
    """One pass over the message lines (with their line endings)."""
    out = Scan()
    rcpt = AddressScanner()
    sender = AddressScanner()
    cur = Header.NONE
    header_done = False
    for raw in source:
        line = normalize(raw)
        if line == b"\n":
            header_done = True
        continuation = line[0] in _WSP
        if not continuation:
            if cur is Header.FROM:
                sender.terminal()
            elif cur in (Header.TO, Header.CC, Header.BCC):
                rcpt.terminal()
            cur = Header.NONE
        if len(line) >= LINESPLIT:
            out.need_linesplit = True
        if not header_done and cur is Header.NONE:
            lower = line[:32].lower()
            for h in _KEYWORDS:
                assert isinstance(h.value, bytes)
                if len(line) > len(h.value) and lower.startswith(h.value):
                    cur = h
                    break
        if cur is not Header.NONE:
            out.noheader = False
        if cur is not Header.BCC:
            out.lines.append(line)
        if cur is Header.FROM:
            out.saw_from = True
            if get_from:
                sender.feed(line, continuation)
        elif tflag and cur in (Header.TO, Header.CC, Header.BCC):
            rcpt.feed(line, continuation)
        out.saw_date |= cur is Header.DATE
        out.saw_msgid |= cur is Header.MSGID
        out.saw_mime_version |= cur is Header.MIME_VERSION
        out.saw_content_type |= cur is Header.CONTENT_TYPE
        out.saw_content_disposition |= cur is Header.CONTENT_DISPOSITION
        out.saw_content_transfer_encoding |= cur is Header.CONTENT_TRANSFER_ENCODING
    sender.terminal()
    rcpt.terminal()
    out.rcpts = rcpt.found
    if sender.found:
        out.header_from = sender.found[-1]
    return out


def qp_encode(line: bytes) -> bytes:
    """RFC 2045 §6.7 quoted-printable for one line (without its LF), soft
    line breaks before 76 characters; a dot opening a continuation is
    stuffed here because the caller only stuffs the first."""
    out = bytearray()
    linelen = 0

    def put(chunk: bytes) -> None:
        nonlocal linelen
        if linelen + len(chunk) + 1 > 76:
            out.extend(b"=\r\n")
            if chunk[:1] == b".":
                out.extend(b".")
            linelen = 0
        out.extend(chunk)
        linelen += len(chunk)

    for i, c in enumerate(line):
        last = i == len(line) - 1
        if c in _WSP:  # rule 3: trailing white space is encoded
            put(b"=%02X" % c if last else bytes([c]))
        elif 33 <= c <= 60 or 62 <= c <= 126:
            put(bytes([c]))
        else:
            put(b"=%02X" % c)
    return bytes(out) + b"\r\n"


@dataclass(frozen=True)
class Added:
    """What the submitter adds to the header, decided before DATA."""

    sender: str
    fromname: str | None
    date: str


_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')


def display_name(name: str) -> str:
    """-F or GECOS as an RFC 5322 §3.4 display-name: a quoted-string when it
    holds specials ("Doe, John"); line breaks never reach the header."""
    name = " ".join(name.split())
    if _SPECIALS.search(name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def added_headers(s: Scan, added: Added) -> list[bytes]:
    lines: list[str] = []
    if not s.saw_from:
        name = f"{display_name(added.fromname)} " if added.fromname else ""
        lines.append(f"From: {name}<{added.sender}>")
    if not s.saw_date:
        lines.append(f"Date: {added.date}")
    if s.need_linesplit:
        if not s.saw_mime_version:
            lines.append("MIME-Version: 1.0")
        if not s.saw_content_type:
            lines.append("Content-Type: text/plain; charset=unknown-8bit")
        if not s.saw_content_disposition:
            lines.append("Content-Disposition: inline")
        if not s.saw_content_transfer_encoding:
            lines.append("Content-Transfer-Encoding: quoted-printable")
    return [line.encode("utf-8", "surrogateescape") + b"\r\n" for line in lines]


def data_lines(s: Scan, added: Added) -> Iterator[bytes]:
    """The DATA payload as CRLF lines, dot-stuffed, without the final dot."""
    yield from added_headers(s, added)
    inheaders = True
    if s.noheader:
        yield b"\r\n"
        inheaders = False
    for line in s.lines:
        body = line[:-1]
        if inheaders:
            lower = body[:13].lower()
            if lower.startswith(b"from ") or lower.startswith(b"return-path: "):
                continue
        stuff = b"." if body.startswith(b".") else b""
        if (s.saw_content_transfer_encoding or s.noheader or inheaders
                or not s.need_linesplit):
            yield stuff + body + b"\r\n"
            if inheaders and not body:
                inheaders = False
            continue
        yield stuff + qp_encode(body)
