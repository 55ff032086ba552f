"""A sans-IO ESMTP server state machine (h11 style, DESIGN.md §8).

    proto = ServerProtocol(ProtocolLimits(hostname="mx.example.org"))
    out = proto.greeting()
    proto.receive_data(bytes_from_socket)      # b"" means EOF
    event = proto.next_event()                 # an Event, NEED_DATA or PAUSED
    out = proto.send(reply)                    # serializes and advances state

Each command event waits for exactly one reply: until ``send`` is called,
``next_event`` returns PAUSED, so a pipelined burst (RFC 2920) yields its
events one by one, in order, and every reply goes out in order.  Events with
a ``reply`` attribute (ProtocolError, AuthChallenge) are answered with that
reply unchanged.  Network input never raises: every syntax, sequence or limit
error becomes a ProtocolError event carrying the exact reply.  Misuse by the
caller (a reply with nothing to answer) raises ``ProtocolUsageError``.

The state a positive reply leads to comes from one table, ``TRANSITIONS``,
keyed by (state, command); a missing key is a sequence error (503).

BDAT (RFC 3030, bdat.py) gives the same events as DATA: the first chunk of a
transaction is a ``DataStart(bdat=True)`` (the caller's 354 is not sent),
then DataChunk events, a ``BdatChunkEnd`` (answered with its 250) after each
chunk without LAST, and DataEnd after LAST or after a chunk that failed.  A
refused BDAT's octets are always read and dropped, never run as commands:
a sequence or syntax error is sent after them; the caller's refusal of the
first chunk is sent at once, and every later chunk of that transaction then
gets 503 until RSET.
"""

from __future__ import annotations

import binascii
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from smtpd.smtp import address as A
from smtpd.smtp import events as E
from smtpd.smtp import reply as R
from smtpd.smtp.bdat import ChunkReader
from smtpd.smtp.dotstream import DotReader
from smtpd.smtp.reply import Reply

# RFC 4954 §4: AUTH command lines and SASL responses may be 12288 octets.
MAX_AUTH_LINE = 12288
# Extra octets a MAIL / RCPT line may carry for its parameters: SIZE (RFC
# 1870 §4: 26), BODY (16), SMTPUTF8 (9), RET+ENVID (RFC 3461 §5: 100), AUTH=
# (RFC 4954 §5: 500); NOTIFY+ORCPT (RFC 3461 §5: 500).
MAIL_LINE_EXTRA = 26 + 16 + 9 + 100 + 500
RCPT_LINE_EXTRA = 500
_LOGIN_USERNAME = "VXNlcm5hbWU6"  # base64("Username:")
_LOGIN_PASSWORD = "UGFzc3dvcmQ6"  # base64("Password:")

# C0 controls but TAB in a command line (CR and LF were split off)
_CONTROL_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f]")


class ProtocolUsageError(RuntimeError):
    """The caller broke the API contract (a bug in the caller, never input)."""


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED


class State(enum.Enum):
    GREETING = "greeting"  # the 220 banner is not sent yet
    INIT = "init"  # greeted, no HELO/EHLO yet (also right after TLS)
    READY = "ready"  # identified, no transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted
    DATA = "data"  # reading the message
    BDAT = "bdat"  # reading the octets of a BDAT chunk (RFC 3030)
    CHUNKING = "chunking"  # between the BDAT chunks of a transaction
    AUTH_PLAIN = "auth-plain"  # waiting for the PLAIN response
    AUTH_LOGIN_USER = "auth-login-user"
    AUTH_LOGIN_PASS = "auth-login-pass"
    TLS = "tls"  # 220 sent to STARTTLS, waiting for start_tls_done()
    CLOSED = "closed"


class Cmd(enum.Enum):
    HELO = "HELO"
    EHLO = "EHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    HELP = "HELP"
    VRFY = "VRFY"
    EXPN = "EXPN"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    BDAT = "BDAT"
    # Not verbs: what else the caller may be answering.
    DOT = "."  # end of DATA (or of BDAT LAST)
    CHUNK = "chunk-end"  # end of a BDAT chunk without LAST
    CHALLENGE = "334"  # a SASL challenge
    CREDENTIALS = "credentials"  # the end of a SASL exchange
    ERROR = "error"  # a ProtocolError


def _build_transitions() -> dict[tuple[State, Cmd], State | Reply]:
    """(state, command) -> the state a positive reply leads to, or the
    error reply when the command is refused in that state by its own text."""
    t: dict[tuple[State, Cmd], State | Reply] = {}
    talking = (State.INIT, State.READY, State.MAIL, State.RCPT)
    for st in talking:
        for cmd in (Cmd.NOOP, Cmd.HELP, Cmd.VRFY, Cmd.EXPN):
            t[st, cmd] = st
        t[st, Cmd.QUIT] = State.CLOSED
        # RFC 5321 §4.1.4: a later EHLO resets the transaction like RSET.
        t[st, Cmd.HELO] = State.READY
        t[st, Cmd.EHLO] = State.READY
    for st in (State.READY, State.MAIL, State.RCPT):
        t[st, Cmd.RSET] = State.READY
    t[State.READY, Cmd.MAIL] = State.MAIL
    t[State.READY, Cmd.STARTTLS] = State.TLS
    t[State.READY, Cmd.AUTH] = State.READY
    t[State.MAIL, Cmd.RCPT] = State.RCPT
    t[State.RCPT, Cmd.RCPT] = State.RCPT
    t[State.RCPT, Cmd.DATA] = State.DATA
    t[State.MAIL, Cmd.DATA] = R.NO_RECIPIENT
    # RFC 3030 §2: BDAT after RCPT and between chunks; DATA, MAIL and RCPT
    # between chunks are 503 (no key).  HELO/EHLO too: they would have to
    # drop a half-received message, RSET says so explicitly.
    t[State.RCPT, Cmd.BDAT] = State.BDAT
    t[State.CHUNKING, Cmd.BDAT] = State.BDAT
    t[State.MAIL, Cmd.BDAT] = R.NO_RECIPIENT
    for cmd in (Cmd.NOOP, Cmd.HELP, Cmd.VRFY, Cmd.EXPN):
        t[State.CHUNKING, cmd] = State.CHUNKING
    t[State.CHUNKING, Cmd.QUIT] = State.CLOSED
    t[State.CHUNKING, Cmd.RSET] = State.READY  # RFC 3030 §2: clears all chunks
    return t


TRANSITIONS = _build_transitions()
_AUTH_STATES = frozenset({State.AUTH_PLAIN, State.AUTH_LOGIN_USER, State.AUTH_LOGIN_PASS})


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """Per-listener settings (smtpd.conf ``listen on`` and ``smtp limit``)."""

    hostname: str
    max_message_size: int = 36700160
    max_rcpt: int = 1000
    max_mails: int = 100
    max_command_line: int = 512  # RFC 5321 §4.5.3.1.4, CRLF included
    max_text_line: int = 65535  # DATA lines, CRLF included (see dotstream)
    max_bad_commands: int = 10
    auth_mechanisms: tuple[str, ...] = ()  # e.g. ("PLAIN", "LOGIN"); () = no AUTH
    auth_plaintext: bool = False  # offer AUTH without TLS
    starttls_available: bool = False
    tls_active: bool = False  # smtps: TLS from the first byte
    auth_required: bool = False  # listener "auth"
    tls_required: bool = False  # listener "tls-require"
    dsn: bool = True  # listener "no-dsn" sets False
    smtputf8: bool = True
    pipelining: bool = True
    chunking: bool = True  # RFC 3030 CHUNKING (BDAT)
    # RFC 3030 BINARYMIME: bodies stored unaltered, which the LF spool
    # cannot give back faithfully yet; off unless the caller can.
    binarymime: bool = False


@dataclass(frozen=True, slots=True)
class _Pending:
    cmd: Cmd
    ok: State  # state after a positive reply
    fail: State  # state after any other reply
    expect: int = 2  # the reply class that counts as positive
    close: bool = False


class _Refuse(Exception):
    """Internal: a command is refused with ``reply`` (never leaves here)."""

    def __init__(self, reply: Reply, counted: bool = True) -> None:
        super().__init__(reply.code)
        self.reply = reply
        self.counted = counted


class ServerProtocol:
    def __init__(self, limits: ProtocolLimits) -> None:
        self.limits = limits
        self._state = State.GREETING
        self._buf = bytearray()
        self._eof = False
        self._eof_reported = False
        self._discard_line = False
        self._pending: _Pending | None = None
        self._reader: DotReader | None = None
        self._bad = 0
        self._auth_user = ""
        self.tls_active = limits.tls_active
        self.authenticated = False
        self.helo: str | None = None
        self.extended = False
        self.mails = 0  # messages accepted in this session
        self.rcpts = 0  # recipients accepted in this transaction
        self.tx_smtputf8 = False
        self.last_command = ""  # the client's last line, AUTH secrets masked
        self._helo_pending: tuple[str, bool] | None = None
        self._mail_smtputf8 = False
        self.tx_body: A.Body | None = None  # BODY= of the transaction
        self._mail_body: A.Body | None = None
        # BDAT (RFC 3030): the transaction's chunk reader, the pending
        # command's size and LAST flag, octets to drop before the next
        # command (a refused chunk) and the reply due once they are dropped.
        self._chunks: ChunkReader | None = None
        self._chunk_size = 0
        self._chunk_last = False
        self._bdat_failed = False
        self._discard = 0
        self._deferred: tuple[Reply, bool] | None = None
        self._effects: dict[Cmd, Callable[[], None]] = {
            Cmd.MAIL: self._tx_begin,
            Cmd.RCPT: self._tx_rcpt,
            Cmd.DOT: self._tx_done,
            Cmd.RSET: self._tx_clear,
            Cmd.HELO: self._identified,
            Cmd.EHLO: self._identified,
            Cmd.DATA: self._data_begin,
            Cmd.BDAT: self._bdat_begin,
            Cmd.STARTTLS: self._tls_begin,
            Cmd.CREDENTIALS: self._authenticated,
        }
        self._verbs: dict[Cmd, Callable[[str | None], E.Event]] = {
            Cmd.HELO: self._cmd_helo,
            Cmd.EHLO: self._cmd_ehlo,
            Cmd.MAIL: self._cmd_mail,
            Cmd.RCPT: self._cmd_rcpt,
            Cmd.DATA: self._cmd_data,
            Cmd.RSET: self._cmd_noarg(E.Rset()),
            Cmd.QUIT: self._cmd_noarg(E.Quit()),
            Cmd.NOOP: lambda arg: E.Noop(),
            Cmd.HELP: lambda arg: E.Help(),
            Cmd.VRFY: lambda arg: E.Vrfy(arg or ""),
            Cmd.EXPN: lambda arg: E.Expn(arg or ""),
            Cmd.STARTTLS: self._cmd_starttls,
            Cmd.AUTH: self._cmd_auth,
        }
        self._sasl: dict[State, Callable[[str], E.Event]] = {
            State.AUTH_PLAIN: self._sasl_plain,
            State.AUTH_LOGIN_USER: self._sasl_login_user,
            State.AUTH_LOGIN_PASS: self._sasl_login_pass,
        }

    # ------------------------------------------------------------------ API

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        """True once the connection must be closed (after 221, 421, or a
        ProtocolError with ``close``, or the client's EOF)."""
        return self._state is State.CLOSED

    @property
    def auth_offered(self) -> bool:
        return (
            bool(self.limits.auth_mechanisms)
            and (self.tls_active or self.limits.auth_plaintext)
            and not self.authenticated
        )

    def greeting(self, text: str | None = None) -> bytes:
        """The 220 banner; starts the session.  To refuse a connection
        instead, ``send`` a 421 or 554 reply without calling this."""
        if self._state is not State.GREETING:
            raise ProtocolUsageError("greeting already sent")
        self._state = State.INIT
        if text is None:
            return R.greeting(self.limits.hostname).to_bytes()
        return R.greeting(self.limits.hostname, text).to_bytes()

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` is end of file."""
        if self._eof:
            if data:
                raise ProtocolUsageError("data after EOF")
            return
        if not data:
            self._eof = True
        elif self._state not in (State.TLS, State.CLOSED):
            # In TLS, bytes are plaintext sent after STARTTLS: dropped
            # (RFC 3207 §4.2, no command injection).
            self._buf += data

    def start_tls_done(self) -> None:
        """The TLS handshake after STARTTLS succeeded: the session starts
        over (RFC 3207 §4.2), the client must send EHLO again."""
        if self._state is not State.TLS:
            raise ProtocolUsageError("no STARTTLS in progress")
        self._buf.clear()
        self.tls_active = True
        self.helo = None
        self.extended = False
        self._state = State.INIT

    def next_event(self) -> E.Event | Sentinel:
        if self._pending is not None or self._state in (
            State.GREETING,
            State.TLS,
            State.CLOSED,
        ):
            return PAUSED
        if self._state is State.DATA:
            return self._data_event()
        if self._state is State.BDAT:
            return self._bdat_event()
        return self._command_event()

    def send(self, reply: Reply) -> bytes:
        """Serialize ``reply``, the answer to the last event, and move on."""
        if self._state is State.CLOSED:
            raise ProtocolUsageError("connection is closed")
        pending = self._pending
        if pending is None:
            if reply.code != 421 and self._state is not State.GREETING:
                raise ProtocolUsageError("no command waits for a reply")
            # 421 may be sent at any time (shutdown, timeout: RFC 5321 §3.8);
            # any reply instead of the greeting refuses the connection.
            self._state = State.CLOSED
            return reply.to_bytes()
        self._pending = None
        if pending.close or reply.code == 421:
            self._state = State.CLOSED
        elif reply.code // 100 == pending.expect:
            self._state = pending.ok
            effect = self._effects.get(pending.cmd)
            if effect is not None:
                effect()
        else:
            self._state = pending.fail
            if pending.cmd in (Cmd.BDAT, Cmd.CHUNK):
                # RFC 3030 §2: the refused chunk's octets are still read
                # (after this reply: it is due now), and no later chunk of
                # this transaction may start a message without this one.
                self._bdat_failed = True
                self._discard = self._chunk_size if pending.cmd is Cmd.BDAT else 0
        if pending.cmd is Cmd.BDAT and self._state is State.BDAT:
            return b""  # RFC 3030: no intermediate reply to BDAT
        return reply.to_bytes()

    def helo_reply(self, event: E.Helo, peer: str) -> Reply:
        """The positive answer to HELO/EHLO; ``peer`` is the client IP."""
        host = self.limits.hostname
        if not event.extended:
            return R.helo_reply(host, event.name, peer)
        return R.ehlo_reply(host, event.name, peer, self.ehlo_keywords())

    def ehlo_keywords(self) -> list[str]:
        lim = self.limits
        kw = ["8BITMIME", "ENHANCEDSTATUSCODES", f"SIZE {lim.max_message_size}"]
        if lim.dsn:
            kw.append("DSN")
        if lim.pipelining:
            kw.append("PIPELINING")
        if lim.smtputf8:
            kw.append("SMTPUTF8")
        if lim.chunking:
            kw.append("CHUNKING")
            if lim.binarymime:
                kw.append("BINARYMIME")
        if lim.starttls_available and not self.tls_active:
            kw.append("STARTTLS")
        if self.tls_active:
            kw.append("REQUIRETLS")  # RFC 8689 §4.1: only over TLS
        if self.auth_offered:
            kw.append("AUTH " + " ".join(lim.auth_mechanisms))
        kw.append("HELP")
        return kw

    # ------------------------------------------------------------ internals

    def _wait(self, cmd: Cmd, ok: State, expect: int = 2, fail: State | None = None) -> None:
        self._pending = _Pending(cmd, ok, self._state if fail is None else fail, expect)

    def _error(self, reply: Reply, counted: bool = True, close: bool = False) -> E.ProtocolError:
        if counted:
            self._bad += 1
            if self._bad > self.limits.max_bad_commands:
                reply, close = R.TOO_MANY_ERRORS, True
        after = State.READY if self._state in _AUTH_STATES else self._state
        self._pending = _Pending(Cmd.ERROR, after, after, close=close)
        return E.ProtocolError(reply, close)

    def _data_event(self) -> E.Event | Sentinel:
        reader = self._reader
        assert reader is not None
        chunk = reader.read(self._buf)
        if chunk:
            return E.DataChunk(chunk)
        if reader.done:
            self._reader = None
            self._wait(Cmd.DOT, State.READY, fail=State.READY)
            return E.DataEnd(reader.size, reader.too_big, reader.final_error())
        return self._eof_event()

    def _bdat_event(self) -> E.Event | Sentinel:
        reader = self._chunks
        assert reader is not None
        chunk = reader.read(self._buf)
        if chunk:
            return E.DataChunk(chunk)
        if reader.remaining:
            return self._eof_event()
        if self._chunk_last:
            tail = reader.finish()
            if tail:
                return E.DataChunk(tail)
        error = reader.final_error()
        if self._chunk_last or error is not None:
            # The message is complete, or failed at this chunk (RFC 3030
            # §2: its octets were read, now the error): either way the
            # session commits or drops it as after DATA.
            self._chunks = None
            self._wait(Cmd.DOT, State.READY, fail=State.READY)
            return E.DataEnd(reader.size, reader.too_big, error)
        self._wait(Cmd.CHUNK, State.CHUNKING, fail=State.CHUNKING)
        return E.BdatChunkEnd(reader.chunk_size, R.bdat_ok(reader.chunk_size))

    def _eof_event(self) -> E.Event | Sentinel:
        if not self._eof:
            return NEED_DATA
        if self._eof_reported:
            return PAUSED
        self._eof_reported = True
        self._state = State.CLOSED
        return E.ConnectionClosed()

    def _line_limit(self, line: bytes) -> int:
        if self._state in _AUTH_STATES:
            return MAX_AUTH_LINE
        verb = line[:5].upper()
        base = self.limits.max_command_line
        if verb == b"MAIL ":
            return base + MAIL_LINE_EXTRA
        if verb == b"RCPT ":
            return base + RCPT_LINE_EXTRA
        if verb == b"AUTH ":
            return max(base, MAX_AUTH_LINE)
        return base

    def _command_event(self) -> E.Event | Sentinel:
        if self._discard:
            # The octets of a refused BDAT chunk: never read as commands.
            take = min(self._discard, len(self._buf))
            del self._buf[:take]
            self._discard -= take
            if self._discard:
                return self._eof_event()
        if self._deferred is not None:
            reply, counted = self._deferred
            self._deferred = None
            return self._error(reply, counted)
        hard_cap = max(self.limits.max_command_line + MAIL_LINE_EXTRA, MAX_AUTH_LINE)
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if self._discard_line:
                    self._buf.clear()
                elif len(self._buf) > hard_cap:
                    # RFC 5321 §4.5.3.1.10; the rest of the line is dropped.
                    self._buf.clear()
                    self._discard_line = True
                    self.last_command = ""
                    return self._error(R.LINE_TOO_LONG)
                return self._eof_event()
            raw = bytes(self._buf[: nl + 1])
            del self._buf[: nl + 1]
            if self._discard_line:
                self._discard_line = False
                continue
            break
        too_long = len(raw) > self._line_limit(raw)
        # Commands end in CRLF; a bare LF is tolerated here as upstream does
        # (only DATA needs the strict rule against smuggling).
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        in_auth = self._state in _AUTH_STATES
        # Bounded: it is for log lines (upstream keeps LINE_MAX bytes).
        self.last_command = "********" if in_auth else _mask(line[:1024])
        if too_long:
            return self._error(R.LINE_TOO_LONG)
        if self._buf and not self.limits.pipelining and line[:5].upper() != b"BDAT ":
            return self._error(R.PIPELINING_UNSUPPORTED, close=True)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(R.SYNTAX_ERROR)
        if _CONTROL_CHAR.search(text):
            return self._error(R.SYNTAX_ERROR)
        try:
            if in_auth:
                return self._sasl[self._state](text)
            event = self._command(text)
        except _Refuse as refusal:
            return self._error(refusal.reply, refusal.counted)
        # None: a BDAT whose octets come first (a later chunk, or a refused
        # one whose reply is due after them).
        return self.next_event() if event is None else event

    def _command(self, text: str) -> E.Event | None:
        upper = text[:10].upper()
        if upper.startswith("MAIL FROM:") or upper.startswith("RCPT TO:"):
            verb_text, _, arg = text.partition(":")
            verb_text = verb_text[:4]
        else:
            verb_text, _, arg = text.partition(" ")
        try:
            cmd = Cmd(verb_text.upper())
        except ValueError:
            raise _Refuse(R.UNRECOGNIZED) from None
        if cmd is Cmd.BDAT:
            return self._cmd_bdat(arg.strip(" \t"))
        if cmd not in self._verbs:
            raise _Refuse(R.UNRECOGNIZED)
        if cmd in (Cmd.MAIL, Cmd.RCPT) and not upper.startswith(("MAIL FROM:", "RCPT TO:")):
            raise _Refuse(R.SYNTAX_ERROR)
        target = TRANSITIONS.get((self._state, cmd), R.BAD_SEQUENCE)
        if isinstance(target, Reply):
            raise _Refuse(target)
        stripped = arg.strip(" \t")
        event = self._verbs[cmd](stripped or None)
        if self._pending is None:
            expect = 3 if cmd is Cmd.DATA else 2
            self._wait(cmd, target, expect)
        return event

    # -- verbs: each returns its event or raises _Refuse

    def _cmd_noarg(self, event: E.Event) -> Callable[[str | None], E.Event]:
        def handler(arg: str | None) -> E.Event:
            if arg is not None:
                raise _Refuse(R.NO_ARGUMENTS)
            return event

        return handler

    def _cmd_data(self, arg: str | None) -> E.Event:
        if arg is not None:
            raise _Refuse(R.NO_ARGUMENTS)
        if self.tx_body is A.Body.BINARYMIME:
            raise _Refuse(R.BINARYMIME_NEEDS_BDAT)
        return E.DataStart()

    def _cmd_bdat(self, arg: str) -> E.Event | None:
        """``BDAT chunk-size [LAST]`` (RFC 3030 §2).  Returns the DataStart
        of a transaction's first chunk, or None when the octets are read
        (a later chunk) or dropped (a refused one, replied to after them)."""
        words = arg.split()
        if not words or not (words[0].isascii() and words[0].isdigit()) or len(words[0]) > 20:
            return self._error(R.BDAT_NO_SIZE, close=True)
        size = int(words[0])
        refusal, counted = self._bdat_refusal(words), True
        if refusal is R.BDAT_AFTER_FAILURE:
            counted = False  # a pipelined burst after one failure is no abuse
        if refusal is not None:
            self._discard = size
            self._deferred = (refusal, counted)
            return None
        self._chunk_size = size
        self._chunk_last = len(words) == 2
        if self._state is State.CHUNKING:
            assert self._chunks is not None
            self._chunks.start(size)
            self._state = State.BDAT
            return None
        self._wait(Cmd.BDAT, State.BDAT, expect=3, fail=State.CHUNKING)
        return E.DataStart(bdat=True)

    def _bdat_refusal(self, words: list[str]) -> Reply | None:
        if not self.limits.chunking:
            return R.UNRECOGNIZED
        if len(words) > 2 or (len(words) == 2 and words[1].upper() != "LAST"):
            return R.BDAT_SYNTAX
        if self._state is State.CHUNKING and self._bdat_failed:
            return R.BDAT_AFTER_FAILURE
        target = TRANSITIONS.get((self._state, Cmd.BDAT), R.BAD_SEQUENCE)
        return target if isinstance(target, Reply) else None

    def _cmd_helo(self, arg: str | None) -> E.Event:
        return self._helo(arg, extended=False)

    def _cmd_ehlo(self, arg: str | None) -> E.Event:
        return self._helo(arg, extended=True)

    def _helo(self, arg: str | None, extended: bool) -> E.Event:
        if arg is None:
            raise _Refuse(R.helo_required("EHLO" if extended else "HELO"))
        if not A.is_valid_domain(arg):
            raise _Refuse(R.INVALID_DOMAIN)
        self._helo_pending = (arg, extended)
        return E.Helo(arg, extended)

    def _cmd_mail(self, arg: str | None) -> E.Event:
        lim = self.limits
        if lim.tls_required and not self.tls_active:
            raise _Refuse(R.STARTTLS_REQUIRED)
        if lim.auth_required and not self.authenticated:
            raise _Refuse(R.AUTH_REQUIRED)
        if self.mails >= lim.max_mails:
            raise _Refuse(R.TOO_MANY_MAILS, counted=False)
        try:
            mailbox, rest = A.parse_path(arg or "", lim.hostname)
        except A.AddressError:
            raise _Refuse(R.SENDER_SYNTAX) from None
        try:
            params = A.parse_mail_params(rest, dsn=lim.dsn, smtputf8=lim.smtputf8,
                                         requiretls=self.tls_active)
        except A.ParamError as err:
            raise _Refuse(err.reply) from None
        if params.body is A.Body.BINARYMIME and not (lim.binarymime and lim.chunking):
            # RFC 3030 §3: only when offered (it needs BDAT).
            raise _Refuse(R.unsupported_mail_option("BODY=BINARYMIME"))
        if mailbox is not None and not mailbox.is_ascii and not params.smtputf8:
            raise _Refuse(R.NON_ASCII_ADDRESS)  # RFC 6531 §3.4
        if params.size is not None and params.size > lim.max_message_size:
            raise _Refuse(R.SIZE_EXCEEDED, counted=False)
        self._mail_smtputf8 = params.smtputf8
        self._mail_body = params.body
        return E.MailFrom(mailbox, params)

    def _cmd_rcpt(self, arg: str | None) -> E.Event:
        if self.rcpts >= self.limits.max_rcpt:
            raise _Refuse(R.TOO_MANY_RCPT, counted=False)
        try:
            mailbox, rest = A.parse_path(arg or "", self.limits.hostname)
        except A.AddressError:
            raise _Refuse(R.RCPT_SYNTAX) from None
        if mailbox is None:
            raise _Refuse(R.RCPT_SYNTAX)
        try:
            params = A.parse_rcpt_params(rest, dsn=self.limits.dsn)
        except A.ParamError as err:
            raise _Refuse(err.reply) from None
        if not mailbox.is_ascii and not self.tx_smtputf8:
            raise _Refuse(R.NON_ASCII_ADDRESS)
        return E.RcptTo(mailbox, params)

    def _cmd_starttls(self, arg: str | None) -> E.Event:
        if not self.limits.starttls_available:
            raise _Refuse(R.NOT_SUPPORTED)
        if self.tls_active:
            raise _Refuse(R.ALREADY_SECURED)
        if arg is not None:
            raise _Refuse(R.NO_ARGUMENTS)
        return E.StartTls()

    def _cmd_auth(self, arg: str | None) -> E.Event:
        if self.authenticated:
            raise _Refuse(R.ALREADY_AUTHENTICATED)
        if not self.auth_offered:
            raise _Refuse(R.NOT_SUPPORTED)
        if arg is None:
            raise _Refuse(R.AUTH_NO_PARAMS)
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        initial = initial.strip()
        if initial:
            self.last_command = f"AUTH {mech} ********"
        if mech not in self.limits.auth_mechanisms or mech not in ("PLAIN", "LOGIN"):
            raise _Refuse(R.auth_mechanism_unsupported(mech))
        if mech == "PLAIN":
            if not initial:
                return self._challenge("", State.AUTH_PLAIN)
            return self._sasl_plain(initial)
        if not initial:
            return self._challenge(_LOGIN_USERNAME, State.AUTH_LOGIN_USER)
        return self._sasl_login_user(initial)

    # -- SASL (RFC 4954 §4, RFC 4616 PLAIN, draft-murchison-sasl-login)

    def _challenge(self, text: str, then: State) -> E.Event:
        self._wait(Cmd.CHALLENGE, then, expect=3, fail=State.READY)
        return E.AuthChallenge(Reply(334, None, text))

    def _credentials(self, mechanism: str, user: str, password: str, authzid: str) -> E.Event:
        self._wait(Cmd.CREDENTIALS, State.READY, fail=State.READY)
        return E.AuthCredentials(mechanism, user, password, authzid)

    def _sasl_plain(self, response: str) -> E.Event:
        parts = _b64(response).split(b"\0")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise _Refuse(R.SYNTAX_ERROR)
        authzid, user, password = (_utf8(p) for p in parts)
        return self._credentials("PLAIN", user, password, authzid)

    def _sasl_login_user(self, response: str) -> E.Event:
        user = _utf8(_b64(response))
        if not user:
            raise _Refuse(R.SYNTAX_ERROR)
        self._auth_user = user
        return self._challenge(_LOGIN_PASSWORD, State.AUTH_LOGIN_PASS)

    def _sasl_login_pass(self, response: str) -> E.Event:
        password = _utf8(_b64(response))
        user, self._auth_user = self._auth_user, ""
        return self._credentials("LOGIN", user, password, "")

    # -- effects of positive replies

    def _tx_begin(self) -> None:
        self._tx_clear()
        self.tx_smtputf8 = self._mail_smtputf8
        self.tx_body = self._mail_body

    def _tx_rcpt(self) -> None:
        self.rcpts += 1

    def _tx_done(self) -> None:
        self.mails += 1
        self._tx_clear()

    def _tx_clear(self) -> None:
        self.rcpts = 0
        self.tx_smtputf8 = False
        self.tx_body = None
        self._chunks = None
        self._bdat_failed = False

    def _identified(self) -> None:
        self._tx_clear()
        if self._helo_pending is not None:
            self.helo, self.extended = self._helo_pending
            self._helo_pending = None

    def _data_begin(self) -> None:
        self._reader = DotReader(self.limits.max_message_size, self.limits.max_text_line)

    def _bdat_begin(self) -> None:
        # The first chunk of the transaction was accepted (354 from the
        # session, never sent).
        lim = self.limits
        self._chunks = ChunkReader(lim.max_message_size, lim.max_text_line,
                                   binary=self.tx_body is A.Body.BINARYMIME)
        self._chunks.start(self._chunk_size)

    def _tls_begin(self) -> None:
        # RFC 3207 §4.2: whatever the client sent after STARTTLS is plaintext
        # that must not survive into the TLS session.
        self._buf.clear()

    def _authenticated(self) -> None:
        self.authenticated = True


def _b64(text: str) -> bytes:
    if text == "*":
        raise _Refuse(R.AUTH_CANCELLED, counted=False)  # RFC 4954 §4
    if text == "=":
        return b""  # RFC 4954 §4: an empty initial response
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _Refuse(R.SYNTAX_ERROR) from None


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refuse(R.SYNTAX_ERROR) from None


def _mask(line: bytes) -> str:
    """The client's line for logs; an AUTH initial response is masked."""
    text = line.decode("utf-8", errors="replace")
    head = text[:5].upper()
    if head == "AUTH ":
        parts = text.split(" ", 2)
        if len(parts) > 2:
            return f"{parts[0]} {parts[1]} ********"
    return text
