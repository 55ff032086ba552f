"""The client against the project's own server state machine, in memory:
whatever one writes, the other reads (pipelining, AUTH, DATA, RSET)."""

from __future__ import annotations

from test_protocol_driver import default_answer

from smtpd.smtp import client as C
from smtpd.smtp import events as E
from smtpd.smtp.client import ClientProtocol
from smtpd.smtp.protocol import ProtocolLimits, ServerProtocol
from smtpd.smtp.protocol import Sentinel as ServerSentinel
from smtpd.smtp.reply import Reply


class Pair:
    def __init__(self, **limits: object) -> None:
        self.server = ServerProtocol(ProtocolLimits(hostname="mx.test", **limits))  # type: ignore[arg-type]
        self.client = ClientProtocol("relay.test")
        self.events: list[E.Event] = []
        self.data = bytearray()
        self.client.receive_data(self.server.greeting())

    def answer(self, event: E.Event) -> Reply | None:
        if isinstance(event, E.RcptTo) and event.address.local == "gone":
            return Reply(550, "5.1.1", "No such user")
        reply: Reply | None = default_answer(self.server, event)
        return reply

    def write(self, data: bytes) -> list[C.Event]:
        """Client bytes to the server; the server's replies back; the
        client's events."""
        self.server.receive_data(data)
        while True:
            ev = self.server.next_event()
            if isinstance(ev, ServerSentinel):
                break
            self.events.append(ev)
            if isinstance(ev, E.DataChunk):
                self.data += ev.data
            reply = self.answer(ev)
            if reply is not None:
                self.client.receive_data(self.server.send(reply))
        return self.read()

    def read(self) -> list[C.Event]:
        out: list[C.Event] = []
        while (ev := self.client.next_event()) is not C.NEED_DATA:
            assert not isinstance(ev, C.Sentinel)
            out.append(ev)
        return out


def test_pipelined_transaction_against_our_server() -> None:
    p = Pair(auth_mechanisms=("PLAIN", "LOGIN"), auth_plaintext=True)
    [g] = p.read()
    assert isinstance(g, C.Greeting) and g.reply.code == 220
    [e] = p.write(p.client.ehlo())
    assert isinstance(e, C.EhloDone) and "PIPELINING" in e.extensions
    assert "AUTH" in e.extensions and "8BITMIME" in e.extensions
    evs = p.write(p.client.auth_login("alice", "secret"))
    while isinstance(evs[-1], C.AuthChallenge):
        evs = p.write(p.client.auth_response())
    assert isinstance(evs[-1], C.AuthDone) and evs[-1].reply.code == 235
    c = p.client
    burst = (c.mail("a@src.test", ["BODY=8BITMIME"]) + c.rcpt("b@dest.test")
             + c.rcpt("gone@dest.test") + c.rcpt("d@dest.test", ["NOTIFY=NEVER"]) + c.data())
    evs = p.write(burst)
    assert [type(ev).__name__ for ev in evs] == [
        "MailReply", "RcptReply", "RcptReply", "RcptReply", "DataReply"]
    assert c.accepted == (0, 2)
    message = b"Subject: t\n\n.dot\n..two\n\xc3\xa9\n.\nlast"
    evs = p.write(c.message_chunk(message[:7]) + c.message_chunk(message[7:]) + c.end_of_data())
    [m] = evs
    assert isinstance(m, C.MessageReply) and m.reply.code == 250
    assert bytes(p.data) == message + b"\n"
    [r] = p.write(c.rset())
    assert isinstance(r, C.RsetReply) and r.reply.code == 250
    [q] = p.write(c.quit())
    assert isinstance(q, C.QuitReply) and q.reply.code == 221


def test_auth_plain_against_our_server() -> None:
    p = Pair(auth_mechanisms=("PLAIN",), auth_plaintext=True)
    p.read()
    p.write(p.client.ehlo())
    [d] = p.write(p.client.auth_plain("alice", "secret"))
    assert isinstance(d, C.AuthDone) and d.reply.code == 235
    [d2] = p.write(p.client.auth_plain("alice", "wrong"))
    assert isinstance(d2, C.AuthDone) and d2.reply.code == 503  # already authenticated
