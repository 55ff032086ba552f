"""LMTP client (RFC 2033) for `action "x" lmtp "host:port"|"/socket"`.

Runs in the delivery worker, one delivery at a time, so it uses a plain
blocking socket with a deadline.  The protocol pieces are sans-IO and
small: `ReplyParser` turns bytes into replies (RFC 5321 §4.2 multi-line form), `DotStuffer`
turns spool bytes (LF) into DATA bytes (CRLF, RFC 5321 §4.5.2
dot-stuffing).  After DATA an LMTP server answers once per accepted
recipient (RFC 2033 §4.2); each answer maps to a result: 2xx OK,
4xx TEMPFAIL, 5xx PERMFAIL, with the server's reply as the text.

As upstream's mail.lmtp: the recipient is the user name, or the final
recipient address with `rcpt-to`; the message carries Return-Path and
Delivered-To like every local delivery; a destination without a port
uses 25.  Unlike mail.lmtp, a 5xx is a permanent failure, not a retry.
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401  # before a privilege drop: host names need it
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from smtpd.mda.format import FormatContext, FormatError, expand_format
from smtpd.mda.message import chunks, prepare
from smtpd.mda.types import (
    DeliveryRequest,
    DeliveryResult,
    ok,
    permfail,
    tempfail,
)

MAX_REPLY_LINE = 4096  # RFC 5321 §4.5.3.1.5 says 512; be lenient, stay bounded
MAX_REPLY_LINES = 100


class LmtpError(Exception):
    """The server broke the protocol (bad reply syntax, overlong reply)."""


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"{self.code} " + " ".join(line for line in self.lines if line)

    def result(self) -> DeliveryResult:
        if 200 <= self.code < 300:
            return ok(self.text)
        if 500 <= self.code < 600:
            return permfail(self.text)
        return tempfail(self.text)


class ReplyParser:
    """Sans-IO: feed bytes, get complete replies."""

    def __init__(self) -> None:
        self._buf = b""
        self._lines: list[str] = []
        self._code: int | None = None

    def feed(self, data: bytes) -> list[Reply]:
        self._buf += data
        replies: list[Reply] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl == -1:
                if len(self._buf) > MAX_REPLY_LINE:
                    raise LmtpError("reply line too long")
                return replies
            raw, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise LmtpError(f"invalid reply line: {line[:80]!r}")
            code = int(line[:3])
            if self._code is not None and code != self._code:
                raise LmtpError("reply code changed inside a multi-line reply")
            self._code = code
            self._lines.append("".join(c if c.isprintable() else "?" for c in line[4:]))
            if len(self._lines) > MAX_REPLY_LINES:
                raise LmtpError("too many reply lines")
            if line[3:4] != "-":
                replies.append(Reply(code, tuple(self._lines)))
                self._lines, self._code = [], None


class DotStuffer:
    """Sans-IO: LF spool bytes in, CRLF dot-stuffed DATA bytes out."""

    def __init__(self) -> None:
        self._bol = True  # at the beginning of a line

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        out = data.replace(b"\n.", b"\n..")
        if self._bol and data[:1] == b".":
            out = b"." + out
        self._bol = data[-1:] == b"\n"
        return out.replace(b"\n", b"\r\n")

    def close(self) -> bytes:
        """The end-of-data marker (after a CRLF if the last line lacked one)."""
        return (b"" if self._bol else b"\r\n") + b".\r\n"


def parse_destination(dest: str) -> tuple[str, int] | str:
    """ "/path" -> unix path; "host", "host:port", "[v6]:port" -> (host, port)."""
    if dest.startswith("/"):
        return dest
    port = 25
    if dest.startswith("["):
        end = dest.find("]")
        if end == -1:
            raise ValueError(f"invalid LMTP destination {dest!r}")
        host, rest = dest[1:end], dest[end + 1 :]
        if host.lower().startswith("ipv6:"):
            host = host[5:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"invalid LMTP destination {dest!r}")
            port = int(rest[1:])
    elif ":" in dest:
        host, _, p = dest.rpartition(":")
        port = int(p)
    else:
        host = dest
    if not host or not 0 < port < 65536:
        raise ValueError(f"invalid LMTP destination {dest!r}")
    return host, port


class _Session:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._parser = ReplyParser()
        self._pending: list[Reply] = []

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("LMTP session timed out")
        self._sock.settimeout(left)

    def send(self, data: bytes) -> None:
        self._arm()
        self._sock.sendall(data)

    def reply(self) -> Reply:
        while not self._pending:
            self._arm()
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("LMTP server closed the connection")
            self._pending.extend(self._parser.feed(data))
        return self._pending.pop(0)

    def command(self, line: str) -> Reply:
        self.send(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return self.reply()


def _connect(dest: str, deadline: float) -> socket.socket:
    target = parse_destination(dest)
    timeout = max(0.001, deadline - time.monotonic())
    if isinstance(target, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(target, timeout=timeout)


def lmtp_transaction(
    dest: str,
    lhlo: str,
    sender: str,
    rcpts: Sequence[str],
    data: Iterable[bytes],
    timeout: float,
) -> list[DeliveryResult]:
    """One LMTP transaction; a result per recipient, in order."""
    deadline = time.monotonic() + timeout
    results: list[DeliveryResult | None] = [None] * len(rcpts)

    def rest(res: DeliveryResult) -> list[DeliveryResult]:
        return [r if r is not None else res for r in results]

    try:
        sock = _connect(dest, deadline)
    except ValueError as exc:
        return rest(permfail(f"550 5.3.5 {exc}"))
    except (OSError, TimeoutError) as exc:
        return rest(tempfail(f"451 4.4.1 LMTP connect to {dest} failed: {exc}"))
    accepted: list[int] = []
    try:
        with sock:
            s = _Session(sock, deadline)
            greeting = s.reply()
            if greeting.code != 220:
                return rest(tempfail(greeting.text))
            hello = s.command(f"LHLO {lhlo}")
            if hello.code != 250:
                return rest(tempfail(hello.text))
            mail = s.command(f"MAIL FROM:<{sender}>")
            if mail.code // 100 != 2:
                return rest(mail.result())
            for i, rcpt in enumerate(rcpts):
                reply = s.command(f"RCPT TO:<{rcpt}>")
                if reply.code // 100 == 2:
                    accepted.append(i)
                else:
                    results[i] = reply.result()
            if accepted:
                go = s.command("DATA")
                if go.code != 354:
                    return rest(go.result() if go.code >= 400 else tempfail(go.text))
                stuffer = DotStuffer()
                for chunk in data:
                    s.send(stuffer.feed(chunk))
                s.send(stuffer.close())
                # RFC 2033 §4.2: one reply per accepted recipient, in order
                for i in accepted:
                    results[i] = s.reply().result()
            with contextlib.suppress(OSError, TimeoutError, ConnectionError, LmtpError):
                s.command("QUIT")
    except LmtpError as exc:
        return rest(tempfail(f"451 4.5.0 LMTP protocol error: {exc}"))
    except TimeoutError:
        return rest(tempfail("451 4.4.2 LMTP session timed out"))
    except OSError as exc:
        return rest(tempfail(f"451 4.4.2 LMTP connection failed: {exc}"))
    return rest(tempfail("451 4.4.2 LMTP session ended early"))


def deliver_lmtp(req: DeliveryRequest, source: BinaryIO) -> DeliveryResult:
    try:
        dest = expand_format(req.lmtp_dest, FormatContext.from_request(req))
    except FormatError as exc:
        return permfail(f"550 5.3.5 Cannot expand LMTP destination: {exc}")
    prepared = prepare(req, source)
    if isinstance(prepared, DeliveryResult):
        return prepared
    rcpt = req.rcpt if req.lmtp_rcpt_to else req.user
    results = lmtp_transaction(
        dest,
        req.hostname or "localhost",
        req.sender,
        [rcpt],
        chunks(prepared.prefix, source),
        req.timeout,
    )
    return results[0]


__all__ = [
    "DotStuffer",
    "LmtpError",
    "Reply",
    "ReplyParser",
    "deliver_lmtp",
    "lmtp_transaction",
    "parse_destination",
]
