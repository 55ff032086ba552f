"""A sans-IO SMTP / LMTP client (h11 style, DESIGN.md §8), the MTA side.

    client = ClientProtocol("mx.example.org")
    client.receive_data(bytes_from_socket)     # b"" means EOF
    event = client.next_event()                # an Event or NEED_DATA
    sock.write(client.ehlo())                  # command methods return bytes

Every command method returns the bytes to write and queues the reply it
expects; replies are matched to commands strictly in order (RFC 5321 §4.2,
and RFC 2920 §3.2 for a pipelined group).  So with PIPELINING the caller
writes ``mail() + rcpt() + ... + data()`` at once and reads the events one by
one.  In LMTP mode (RFC 2033 §4.2) ``end_of_data()`` expects one reply per
recipient accepted so far, each reported with its recipient index.

With CHUNKING (RFC 3030) the message goes as ``bdat(chunk)`` calls, each
answered by a ``ChunkReply``, then ``bdat(rest, last=True)`` answered like
the final dot; ``CrlfEncoder`` turns spool bytes into those wire chunks.

Network input never raises: a malformed reply, a reply nobody asked for or
EOF become ``ProtocolError`` / ``ConnectionClosed`` events, after which the
client is dead (every call of ``next_event`` returns the same event).  Misuse
by the caller (data outside DATA, CR/LF in an argument) raises
``ClientUsageError``.
"""

from __future__ import annotations

import base64
import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from smtpd.smtp.reply import Reply, ReplyError, ReplyParser


class ClientUsageError(RuntimeError):
    """The caller broke the API contract (a bug in the caller, never input)."""


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = Sentinel.NEED_DATA


class Command(enum.Enum):
    """What a queued reply answers."""

    GREETING = "greeting"
    EHLO = "EHLO"
    LHLO = "LHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BDAT = "BDAT"  # a chunk without LAST
    END_OF_DATA = "."  # also BDAT LAST
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


# -- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeting:
    """The banner: 220 to go on, anything else (554, 421) to give up."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class EhloDone:
    """EHLO (or LMTP's LHLO) answered.  ``extensions`` maps each upper-cased
    keyword of a positive reply to its parameters (``{"SIZE": "1000",
    "AUTH": "PLAIN LOGIN", "PIPELINING": ""}``); empty on a refusal, after
    which the caller may try ``helo()`` (RFC 5321 §3.2)."""

    reply: Reply
    extensions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeloDone:
    reply: Reply


@dataclass(frozen=True, slots=True)
class StartTlsReply:
    """220: run the TLS handshake, then call ``tls_established()`` and send
    EHLO again (RFC 3207 §4.2: everything learnt before is forgotten)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """334: answer with ``auth_response()``."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthDone:
    """235 authenticated; anything else refused or cancelled."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class MailReply:
    reply: Reply


@dataclass(frozen=True, slots=True)
class RcptReply:
    """The reply to the ``index``-th RCPT of the transaction (from 0)."""

    index: int
    reply: Reply


@dataclass(frozen=True, slots=True)
class DataReply:
    """354: stream the message with ``message_chunk`` then ``end_of_data``.
    Anything else: the transaction failed (with PIPELINING, often because
    every RCPT was refused, RFC 2920 §3.1)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class MessageReply:
    """The reply after the final dot.  SMTP: one, ``index`` None.  LMTP: one
    per accepted recipient, ``index`` is that recipient's RCPT index."""

    reply: Reply
    index: int | None = None


@dataclass(frozen=True, slots=True)
class ChunkReply:
    """The reply to a BDAT chunk without LAST: 250 to go on; anything else
    failed the transaction (RFC 3030 §2: send no more chunks, RSET)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class RsetReply:
    reply: Reply


@dataclass(frozen=True, slots=True)
class NoopReply:
    reply: Reply


@dataclass(frozen=True, slots=True)
class QuitReply:
    reply: Reply


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The server broke the protocol; close the connection.  ``reply`` is set
    when a well-formed reply came with no command waiting for it (often an
    unsolicited 421, RFC 5321 §3.8)."""

    reason: str
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """EOF from the server (expected after QUIT, a failure otherwise)."""


Event = (
    Greeting | EhloDone | HeloDone | StartTlsReply | AuthChallenge | AuthDone | MailReply
    | RcptReply | DataReply | ChunkReply | MessageReply | RsetReply | NoopReply | QuitReply
    | ProtocolError | ConnectionClosed
)


class State(enum.Enum):
    OPEN = "open"  # commands may be sent
    TLS = "tls"  # 220 to STARTTLS seen, waiting for tls_established()
    DATA = "data"  # 354 seen: message bytes may be sent
    DEAD = "dead"  # protocol error or EOF


@dataclass(frozen=True, slots=True)
class _Pending:
    command: Command
    index: int | None = None


def parse_extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords of a 250 reply (RFC 5321 §4.1.1.1): the first line is
    the greeting, each further line ``KEYWORD [params]``.  Old servers wrote
    ``AUTH=LOGIN``; it is read as ``AUTH LOGIN`` when no AUTH line exists."""
    out: dict[str, str] = {}
    legacy: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if not keyword:
            continue
        if "=" in keyword:
            key, _, value = keyword.partition("=")
            legacy.setdefault(key.upper(), " ".join(p for p in (value, params) if p))
            continue
        out.setdefault(keyword.upper(), params.strip())
    for key, value in legacy.items():
        out.setdefault(key, value)
    return out


def _check_arg(text: str) -> str:
    # An argument with CR, LF or NUL would let envelope data forge commands.
    if "\r" in text or "\n" in text or "\0" in text:
        raise ClientUsageError("CR, LF or NUL in a command argument")
    return text


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class ClientProtocol:
    """The client state machine.  ``helo`` is the name we announce; with
    ``lmtp`` the greeting command is LHLO and the end of data has one reply
    per accepted recipient (RFC 2033)."""

    def __init__(self, helo: str, lmtp: bool = False) -> None:
        self.helo_name = _check_arg(helo)
        self.lmtp = lmtp
        self.state = State.OPEN
        self.extensions: dict[str, str] = {}
        self._parser = ReplyParser()
        self._pending: deque[_Pending] = deque([_Pending(Command.GREETING)])
        self._replies: deque[Reply] = deque()
        self._eof = False
        self._dead: ProtocolError | ConnectionClosed | None = None
        self._rcpt_count = 0
        self._accepted: list[int] = []
        self._auth_steps: list[str] = []
        # streaming state of message_chunk
        self._bol = True
        self._cr = False

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` means EOF."""
        if self._dead is not None or self._eof:
            return
        if not data:
            self._eof = True
            return
        try:
            self._replies.extend(self._parser.feed(data))
        except ReplyError as exc:
            self._fail(ProtocolError(f"malformed reply: {exc}"))

    def next_event(self) -> Event | Sentinel:
        if self._replies and self._dead is None:
            return self._dispatch(self._replies.popleft())
        if self._dead is not None:
            return self._dead
        if self._eof:
            self._fail(ConnectionClosed())
            assert self._dead is not None
            return self._dead
        return NEED_DATA

    @property
    def pending(self) -> int:
        """Replies still expected."""
        return len(self._pending)

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    @property
    def accepted(self) -> tuple[int, ...]:
        """RCPT indexes the server accepted in this transaction."""
        return tuple(self._accepted)

    def _fail(self, event: ProtocolError | ConnectionClosed) -> None:
        self._dead = event
        self.state = State.DEAD
        self._replies.clear()

    def _dispatch(self, reply: Reply) -> Event:
        if not self._pending:
            self._fail(ProtocolError("unexpected reply", reply))
            assert self._dead is not None
            return self._dead
        p = self._pending.popleft()
        ok = reply.code // 100 == 2
        match p.command:
            case Command.GREETING:
                return Greeting(reply)
            case Command.EHLO | Command.LHLO:
                self.extensions = parse_extensions(reply) if ok else {}
                return EhloDone(reply, dict(self.extensions))
            case Command.HELO:
                self.extensions = {}
                return HeloDone(reply)
            case Command.STARTTLS:
                if reply.code == 220:
                    if self._replies or self._pending:
                        # Replies sent before the handshake would be taken
                        # as protected ones: the STARTTLS response injection
                        # class (CVE-2011-0411 turned around, RFC 3207 §4.2).
                        self._fail(ProtocolError("data after the STARTTLS reply"))
                        assert self._dead is not None
                        return self._dead
                    self.state = State.TLS
                return StartTlsReply(reply)
            case Command.AUTH:
                if reply.code == 334 and self._auth_steps:
                    return AuthChallenge(reply)
                self._auth_steps = []
                return AuthDone(reply)
            case Command.MAIL:
                return MailReply(reply)
            case Command.RCPT:
                assert p.index is not None
                if ok:
                    self._accepted.append(p.index)
                return RcptReply(p.index, reply)
            case Command.DATA:
                if reply.code == 354:
                    self.state = State.DATA
                    self._bol, self._cr = True, False
                return DataReply(reply)
            case Command.BDAT:
                return ChunkReply(reply)
            case Command.END_OF_DATA:
                return MessageReply(reply, p.index)
            case Command.RSET:
                return RsetReply(reply)
            case Command.NOOP:
                return NoopReply(reply)
            case Command.QUIT:
                return QuitReply(reply)
        raise AssertionError(p)  # pragma: no cover - match is exhaustive

    # -- commands --------------------------------------------------------------

    def _command(self, line: str, command: Command, index: int | None = None) -> bytes:
        if self.state is not State.OPEN:
            raise ClientUsageError(f"{command.value} in state {self.state.value}")
        self._pending.append(_Pending(command, index))
        return line.encode("utf-8") + b"\r\n"

    def ehlo(self) -> bytes:
        """EHLO, or LHLO in LMTP mode (RFC 2033 §4.1)."""
        verb = Command.LHLO if self.lmtp else Command.EHLO
        return self._command(f"{verb.value} {self.helo_name}", verb)

    def helo(self) -> bytes:
        return self._command(f"HELO {self.helo_name}", Command.HELO)

    def starttls(self) -> bytes:
        return self._command("STARTTLS", Command.STARTTLS)

    def tls_established(self) -> None:
        """The TLS handshake is done: forget the extensions (RFC 3207 §4.2)."""
        if self.state is not State.TLS:
            raise ClientUsageError("no STARTTLS accepted")
        self.state = State.OPEN
        self.extensions = {}
        self._parser = ReplyParser()

    def auth_plain(self, user: str, password: str) -> bytes:
        """AUTH PLAIN with the initial response (RFC 4954 §4, RFC 4616)."""
        token = base64.b64encode(
            b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8")
        ).decode("ascii")
        self._auth_steps = []
        return self._command(f"AUTH PLAIN {token}", Command.AUTH)

    def auth_login(self, user: str, password: str) -> bytes:
        """AUTH LOGIN: the user name and password go in answer to the two
        334 challenges (``auth_response``)."""
        self._auth_steps = [_b64(user), _b64(password)]
        return self._command("AUTH LOGIN", Command.AUTH)

    def auth_response(self) -> bytes:
        """The next SASL line after an ``AuthChallenge``."""
        if not self._auth_steps:
            raise ClientUsageError("no SASL exchange in progress")
        return self._command(self._auth_steps.pop(0), Command.AUTH)

    def mail(self, sender: str, params: Sequence[str] = ()) -> bytes:
        """MAIL FROM:<sender> (``""`` for the null path) and ESMTP params such
        as ``SIZE=123``.  Starts a new transaction."""
        self._rcpt_count = 0
        self._accepted = []
        line = f"MAIL FROM:<{_check_arg(sender)}>"
        for param in params:
            line += " " + _check_arg(param)
        return self._command(line, Command.MAIL)

    def rcpt(self, recipient: str, params: Sequence[str] = ()) -> bytes:
        line = f"RCPT TO:<{_check_arg(recipient)}>"
        for param in params:
            line += " " + _check_arg(param)
        index = self._rcpt_count
        self._rcpt_count += 1
        return self._command(line, Command.RCPT, index)

    def data(self) -> bytes:
        return self._command("DATA", Command.DATA)

    def message_chunk(self, data: bytes) -> bytes:
        """Message bytes as stored in the spool (LF line endings) to wire
        form: every line ends in CRLF and a leading dot is doubled (RFC 5321
        §4.5.2).  A CRLF already present stays one line end.  Streaming: the
        chunks may split lines anywhere."""
        if self.state is not State.DATA:
            raise ClientUsageError("message data outside DATA")
        out = bytearray()
        bol, cr = self._bol, self._cr
        start = 0
        n = len(data)
        while start < n:
            if bol and data[start] == 0x2E:  # "."
                out += b"."
            nl = data.find(b"\n", start)
            if nl < 0:
                out += data[start:]
                cr = data[-1] == 0x0D
                bol = False
                break
            line = data[start:nl]
            if line.endswith(b"\r"):
                line = line[:-1]
            elif not line and cr:
                # The CR of this CRLF ended the previous chunk: already sent.
                out += b"\n"
                start, bol, cr = nl + 1, True, False
                continue
            out += line + b"\r\n"
            start, bol, cr = nl + 1, True, False
        self._bol, self._cr = bol, cr
        return bytes(out)

    def end_of_data(self) -> bytes:
        """The terminating dot, after a line end if the message lacks one.
        LMTP: one reply is expected per recipient accepted (RFC 2033 §4.2)."""
        if self.state is not State.DATA:
            raise ClientUsageError("end of data outside DATA")
        out = b"" if self._bol else (b"\n" if self._cr else b"\r\n")
        self.state = State.OPEN
        if self.lmtp:
            for index in self._accepted:
                self._pending.append(_Pending(Command.END_OF_DATA, index))
        else:
            self._pending.append(_Pending(Command.END_OF_DATA))
        self._bol, self._cr = True, False
        return out + b".\r\n"

    @property
    def chunking(self) -> bool:
        return "CHUNKING" in self.extensions

    def bdat(self, chunk: bytes, last: bool = False) -> bytes:
        """``BDAT <len> [LAST]`` followed by ``chunk`` exactly as given (wire
        form: CRLF lines, no dot-stuffing, RFC 3030 §2).  LAST is answered
        like the final dot: one reply, or one per accepted recipient in LMTP
        mode.  Send LAST only after the RCPT replies were read."""
        line = f"BDAT {len(chunk)}" + (" LAST" if last else "")
        if not last:
            return self._command(line, Command.BDAT) + chunk
        out = self._command(line, Command.END_OF_DATA) + chunk
        if self.lmtp:
            self._pending.pop()
            for index in self._accepted:
                self._pending.append(_Pending(Command.END_OF_DATA, index))
        return out

    def rset(self) -> bytes:
        self._rcpt_count = 0
        self._accepted = []
        return self._command("RSET", Command.RSET)

    def noop(self) -> bytes:
        return self._command("NOOP", Command.NOOP)

    def quit(self) -> bytes:
        return self._command("QUIT", Command.QUIT)


class CrlfEncoder:
    """Spool bytes (LF line ends) to BDAT wire bytes: every line ends in
    CRLF, a CRLF already present stays one line end, nothing is
    dot-stuffed (RFC 3030 §2).  Streaming: the input may split lines, even
    a CRLF, anywhere; ``finish`` ends an unterminated last line, as
    ``end_of_data`` does for DATA."""

    def __init__(self) -> None:
        self._bol = True
        self._cr = False

    def encode(self, data: bytes) -> bytes:
        if not data:
            return b""
        out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._cr and data.startswith(b"\n"):
            out = out[1:]  # the CR of this CRLF ended the previous input
        self._cr = data.endswith(b"\r")
        self._bol = data.endswith(b"\n")
        return out

    def finish(self) -> bytes:
        out = b"" if self._bol else (b"\n" if self._cr else b"\r\n")
        self._bol, self._cr = True, False
        return out
