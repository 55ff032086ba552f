"""A test driver for ServerProtocol (imported by the other test_protocol_*
files) and tests that the driver itself sees what a session would."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable

from smtpd.smtp import events as E
from smtpd.smtp import reply as R
from smtpd.smtp.protocol import NEED_DATA, PAUSED, ProtocolLimits, ServerProtocol, State
from smtpd.smtp.reply import Reply, ReplyParser

Answer = Callable[[ServerProtocol, E.Event], Reply | None]


def default_answer(proto: ServerProtocol, event: E.Event) -> Reply | None:
    """What a permissive session replies."""
    match event:
        case E.Helo():
            return proto.helo_reply(event, "127.0.0.1")
        case E.ProtocolError(reply=reply) | E.AuthChallenge(reply=reply):
            return reply
        case E.MailFrom():
            return R.MAIL_OK
        case E.RcptTo():
            return R.RCPT_OK
        case E.DataStart():
            return R.DATA_GO
        case E.DataEnd(error=error):
            return error if error is not None else Reply(250, "2.0.0", "1234abcd Message accepted")
        case E.Rset():
            return R.RSET_OK
        case E.Noop():
            return R.NOOP_OK
        case E.Quit():
            return R.BYE
        case E.Help():
            return R.HELP
        case E.Vrfy():
            return R.VRFY_CANNOT
        case E.Expn():
            return R.EXPN_DISABLED
        case E.StartTls():
            return R.STARTTLS_GO
        case E.AuthCredentials(username=user, password=password):
            return R.AUTH_OK if (user, password) == ("alice", "secret") else R.AUTH_FAILED
        case E.DataChunk() | E.ConnectionClosed():
            return None
    raise AssertionError(f"unanswered {event!r}")


class Driver:
    def __init__(
        self, limits: ProtocolLimits | None = None, answer: Answer | None = None, **kw: object
    ) -> None:
        if limits is None:
            limits = ProtocolLimits(hostname="mx.test", **kw)  # type: ignore[arg-type]
        self.p = ServerProtocol(limits)
        self.answer = answer or default_answer
        self.out = bytearray(self.p.greeting())
        self.events: list[E.Event] = []
        self.data = bytearray()
        self.messages: list[bytes] = []
        self.tls_on_starttls = True

    def feed(self, data: bytes, sizes: Iterable[int] | None = None) -> Driver:
        pieces = [data] if sizes is None else list(_split(data, sizes))
        for piece in pieces:
            if self.p.closed:
                break
            self.p.receive_data(piece)
            self.pump()
        return self

    def eof(self) -> Driver:
        self.p.receive_data(b"")
        self.pump()
        return self

    def pump(self) -> None:
        while True:
            ev = self.p.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                return
            assert not isinstance(ev, type(NEED_DATA))
            self.events.append(ev)
            if isinstance(ev, E.DataChunk):
                self.data += ev.data
            if isinstance(ev, E.DataEnd):
                self.messages.append(bytes(self.data))
                self.data.clear()
            reply = self.answer(self.p, ev)
            if reply is not None:
                self.out += self.p.send(reply)
            if self.p.state is State.TLS and self.tls_on_starttls:
                self.p.start_tls_done()

    def replies(self) -> list[Reply]:
        return ReplyParser().feed(bytes(self.out))

    def lines(self) -> list[str]:
        return bytes(self.out).decode().split("\r\n")[:-1]

    def merged(self) -> list[E.Event]:
        """The events with consecutive DataChunks joined: how DATA is cut
        into chunks depends on how the input arrived, nothing else does."""
        out: list[E.Event] = []
        for ev in self.events:
            if isinstance(ev, E.DataChunk) and out and isinstance(out[-1], E.DataChunk):
                out[-1] = E.DataChunk(out[-1].data + ev.data)
            else:
                out.append(ev)
        return out

    def of(self, kind: type) -> list[E.Event]:
        return [e for e in self.events if isinstance(e, kind)]


def _split(data: bytes, sizes: Iterable[int]) -> Iterable[bytes]:
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + max(1, size)]
        pos += max(1, size)
    if pos < len(data):
        yield data[pos:]


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


TRANSACTION = (
    b"EHLO client.test\r\n"
    b"MAIL FROM:<a@b.test>\r\n"
    b"RCPT TO:<c@d.test>\r\n"
    b"DATA\r\n"
    b"Subject: hi\r\n\r\nbody\r\n.\r\n"
)


def test_driver_runs_a_transaction() -> None:
    d = Driver().feed(TRANSACTION + b"QUIT\r\n")
    assert [r.code for r in d.replies()] == [220, 250, 250, 250, 354, 250, 221]
    assert d.messages == [b"Subject: hi\n\nbody\n"]
    assert d.p.closed


def test_driver_split() -> None:
    assert list(_split(b"abcdef", [1, 2])) == [b"a", b"bc", b"def"]
