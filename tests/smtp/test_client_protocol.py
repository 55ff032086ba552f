"""The sans-IO SMTP client against scripted server byte streams."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from smtpd.smtp import client as C
from smtpd.smtp.client import NEED_DATA, ClientProtocol, ClientUsageError

EHLO_REPLY = (
    b"250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"
)


def whole(client: ClientProtocol, data: bytes) -> list[C.Event]:
    client.receive_data(data)
    return drain(client)


def bytewise(client: ClientProtocol, data: bytes) -> list[C.Event]:
    out: list[C.Event] = []
    for i in range(len(data)):
        client.receive_data(data[i : i + 1])
        out += drain(client)
    return out


def drain(client: ClientProtocol) -> list[C.Event]:
    out: list[C.Event] = []
    while (ev := client.next_event()) is not NEED_DATA:
        assert not isinstance(ev, C.Sentinel)
        out.append(ev)
        if isinstance(ev, (C.ProtocolError, C.ConnectionClosed)):
            break
    return out


Feeder = Callable[[ClientProtocol, bytes], list[C.Event]]
FEEDERS = [pytest.param(whole, id="whole"), pytest.param(bytewise, id="bytewise")]


@pytest.mark.parametrize("feed", FEEDERS)
def test_pipelined_transaction(feed: Feeder) -> None:
    c = ClientProtocol("me.test")
    [g] = feed(c, b"220 mx.test ESMTP\r\n")
    assert isinstance(g, C.Greeting) and g.reply.code == 220
    assert c.ehlo() == b"EHLO me.test\r\n"
    [e] = feed(c, EHLO_REPLY)
    assert isinstance(e, C.EhloDone)
    assert e.extensions == {"PIPELINING": "", "SIZE": "1000", "8BITMIME": "",
                            "AUTH": "PLAIN LOGIN", "STARTTLS": ""}
    assert c.pipelining
    out = c.mail("a@b.test", ["SIZE=10", "BODY=8BITMIME"]) + c.rcpt("x@y.test") \
        + c.rcpt("z@y.test", ["NOTIFY=NEVER"]) + c.rcpt("w@y.test") + c.data()
    assert out == (b"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<x@y.test>\r\n"
                   b"RCPT TO:<z@y.test> NOTIFY=NEVER\r\nRCPT TO:<w@y.test>\r\nDATA\r\n")
    assert c.pending == 5
    evs = feed(c, b"250 2.0.0 Ok\r\n250 2.1.5 ok\r\n450 4.2.0 busy\r\n"
                  b"550 5.1.1 unknown\r\n354 go\r\n")
    assert [type(ev) for ev in evs] == [C.MailReply, C.RcptReply, C.RcptReply, C.RcptReply,
                                        C.DataReply]
    rcpts = [ev for ev in evs if isinstance(ev, C.RcptReply)]
    assert [(r.index, r.reply.code, r.reply.enhanced) for r in rcpts] == [
        (0, 250, "2.1.5"), (1, 450, "4.2.0"), (2, 550, "5.1.1")]
    assert c.accepted == (0,)
    assert c.state is C.State.DATA
    body = c.message_chunk(b"Subject: x\n\n.dot\nend") + c.end_of_data()
    assert body == b"Subject: x\r\n\r\n..dot\r\nend\r\n.\r\n"
    [m] = feed(c, b"250 2.0.0 12345678 Message accepted\r\n")
    assert isinstance(m, C.MessageReply) and m.index is None and m.reply.code == 250
    assert c.quit() == b"QUIT\r\n"
    assert [type(ev) for ev in feed(c, b"221 2.0.0 Bye\r\n")] == [C.QuitReply]
    c.receive_data(b"")
    assert isinstance(c.next_event(), C.ConnectionClosed)
    assert isinstance(c.next_event(), C.ConnectionClosed)


@pytest.mark.parametrize("feed", FEEDERS)
def test_lmtp_one_reply_per_accepted_recipient(feed: Feeder) -> None:
    c = ClientProtocol("me.test", lmtp=True)
    feed(c, b"220 lmtp ready\r\n")
    assert c.ehlo() == b"LHLO me.test\r\n"
    [e] = feed(c, b"250-lmtp\r\n250 PIPELINING\r\n")
    assert isinstance(e, C.EhloDone) and c.pipelining
    c.mail("")
    for r in ("a@x", "b@x", "c@x"):
        c.rcpt(r)
    c.data()
    feed(c, b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n")
    assert c.accepted == (0, 2)
    assert c.message_chunk(b"x\n") + c.end_of_data() == b"x\r\n.\r\n"
    evs = feed(c, b"250 2.0.0 delivered\r\n452 4.2.2 over quota\r\n")
    assert [(ev.index, ev.reply.code) for ev in evs if isinstance(ev, C.MessageReply)] == [
        (0, 250), (2, 452)]
    assert c.pending == 0


def test_mail_null_sender_and_helo_fallback() -> None:
    c = ClientProtocol("me.test")
    whole(c, b"220 hi\r\n")
    c.ehlo()
    [e] = whole(c, b"502 5.5.1 no ehlo\r\n")
    assert isinstance(e, C.EhloDone) and e.extensions == {} and e.reply.code == 502
    assert c.helo() == b"HELO me.test\r\n"
    [h] = whole(c, b"250 hello\r\n")
    assert isinstance(h, C.HeloDone)
    assert c.mail("") == b"MAIL FROM:<>\r\n"


def test_starttls_forgets_extensions() -> None:
    c = ClientProtocol("me.test")
    whole(c, b"220 hi\r\n")
    c.ehlo()
    whole(c, EHLO_REPLY)
    c.starttls()
    [s] = whole(c, b"220 2.0.0 Ready to start TLS\r\n")
    assert isinstance(s, C.StartTlsReply) and c.state is C.State.TLS
    with pytest.raises(ClientUsageError):
        c.ehlo()
    c.tls_established()
    assert c.extensions == {}
    assert c.ehlo() == b"EHLO me.test\r\n"


def test_auth_plain_and_login() -> None:
    c = ClientProtocol("me.test")
    whole(c, b"220 hi\r\n")
    assert c.auth_plain("u", "p") == b"AUTH PLAIN AHUAcA==\r\n"
    [d] = whole(c, b"235 2.7.0 ok\r\n")
    assert isinstance(d, C.AuthDone) and d.reply.code == 235
    assert c.auth_login("u", "p") == b"AUTH LOGIN\r\n"
    [ch] = whole(c, b"334 VXNlcm5hbWU6\r\n")
    assert isinstance(ch, C.AuthChallenge)
    assert c.auth_response() == b"dQ==\r\n"
    whole(c, b"334 UGFzc3dvcmQ6\r\n")
    assert c.auth_response() == b"cA==\r\n"
    [d2] = whole(c, b"535 5.7.8 no\r\n")
    assert isinstance(d2, C.AuthDone) and d2.reply.code == 535
    with pytest.raises(ClientUsageError):
        c.auth_response()


def test_multiline_and_lenient_lf() -> None:
    c = ClientProtocol("me.test")
    [g] = whole(c, b"220-first\n220-second\r\n220 third\n")
    assert isinstance(g, C.Greeting) and g.reply.lines == ("first", "second", "third")


@pytest.mark.parametrize("chunks,wire", [
    ([b"a\nb\n"], b"a\r\nb\r\n.\r\n"),
    ([b"a\r\nb"], b"a\r\nb\r\n.\r\n"),
    ([b"a\r", b"\nb\r"], b"a\r\nb\r\n.\r\n"),
    ([b".", b".x\n.\n"], b"...x\r\n..\r\n.\r\n"),
    ([b"x\n", b".y"], b"x\r\n..y\r\n.\r\n"),
    ([b""], b".\r\n"),
    ([b"\xff\x00\n"], b"\xff\x00\r\n.\r\n"),
])
def test_message_chunks(chunks: list[bytes], wire: bytes) -> None:
    c = ClientProtocol("me.test")
    whole(c, b"220 hi\r\n")
    c.data()
    whole(c, b"354 go\r\n")
    out = b"".join(c.message_chunk(ch) for ch in chunks) + c.end_of_data()
    assert out == wire
    # byte by byte gives the same wire form
    c2 = ClientProtocol("me.test")
    whole(c2, b"220 hi\r\n")
    c2.data()
    whole(c2, b"354 go\r\n")
    joined = b"".join(chunks)
    out2 = b"".join(c2.message_chunk(joined[i : i + 1]) for i in range(len(joined)))
    assert out2 + c2.end_of_data() == wire


def test_malformed_reply_is_an_event() -> None:
    c = ClientProtocol("me.test")
    c.receive_data(b"hello there\r\n")
    ev = c.next_event()
    assert isinstance(ev, C.ProtocolError)
    assert c.next_event() == ev
    c.receive_data(b"220 late\r\n")
    assert c.next_event() == ev


def test_unsolicited_reply_is_an_error() -> None:
    c = ClientProtocol("me.test")
    whole(c, b"220 hi\r\n")
    [ev] = whole(c, b"421 4.3.2 shutting down\r\n")
    assert isinstance(ev, C.ProtocolError) and ev.reply is not None and ev.reply.code == 421


def test_eof_before_greeting() -> None:
    c = ClientProtocol("me.test")
    c.receive_data(b"220 partial")
    c.receive_data(b"")
    assert isinstance(c.next_event(), C.ConnectionClosed)


def test_usage_errors() -> None:
    c = ClientProtocol("me.test")
    with pytest.raises(ClientUsageError):
        c.mail("a@b\r\nRCPT TO:<evil@x>")
    with pytest.raises(ClientUsageError):
        c.rcpt("a@b", ["X=1\n"])
    with pytest.raises(ClientUsageError):
        c.message_chunk(b"x")
    with pytest.raises(ClientUsageError):
        c.end_of_data()
    with pytest.raises(ClientUsageError):
        ClientProtocol("a\r\nb")


def test_legacy_auth_keyword() -> None:
    c = ClientProtocol("me.test")
    whole(c, b"220 hi\r\n")
    c.ehlo()
    [e] = whole(c, b"250-hi\r\n250-AUTH=LOGIN\r\n250 size 5\r\n")
    assert isinstance(e, C.EhloDone) and e.extensions == {"AUTH": "LOGIN", "SIZE": "5"}


def test_reply_injected_before_tls_is_refused() -> None:
    c = ClientProtocol("me.test")
    whole(c, b"220 hi\r\n")
    c.starttls()
    [ev] = whole(c, b"220 go ahead\r\n250 injected\r\n")
    assert isinstance(ev, C.ProtocolError)
