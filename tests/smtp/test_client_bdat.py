"""The sans-IO client's BDAT (RFC 3030) commands and the spool-to-wire encoder."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smtpd.smtp import client as C
from smtpd.smtp.client import ClientProtocol, CrlfEncoder


def ready(lmtp: bool = False) -> ClientProtocol:
    c = ClientProtocol("me.test", lmtp=lmtp)
    c.receive_data(b"220 hi\r\n")
    assert isinstance(c.next_event(), C.Greeting)
    c.ehlo()
    c.receive_data(b"250-hi\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    assert isinstance(c.next_event(), C.EhloDone)
    return c


def test_bdat_bytes_and_replies_in_order() -> None:
    c = ready()
    assert c.chunking
    out = c.mail("a@b.test") + c.rcpt("c@d.test")
    c.receive_data(b"250 ok\r\n250 ok\r\n")
    assert isinstance(c.next_event(), C.MailReply)
    assert isinstance(c.next_event(), C.RcptReply)
    out = c.bdat(b"x\r\n.\r\n") + c.bdat(b"", last=True)
    assert out == b"BDAT 6\r\nx\r\n.\r\nBDAT 0 LAST\r\n"
    c.receive_data(b"250 2.0.0 6 octets\r\n250 2.0.0 queued\r\n")
    assert c.next_event() == C.ChunkReply(C.Reply(250, "2.0.0", "6 octets"))
    assert c.next_event() == C.MessageReply(C.Reply(250, "2.0.0", "queued"))
    assert c.pending == 0 and c.next_event() is C.NEED_DATA


def test_lmtp_bdat_last_one_reply_per_accepted_recipient() -> None:
    c = ready(lmtp=True)
    c.mail("a@b.test")
    c.rcpt("x@d.test")
    c.rcpt("y@d.test")
    c.rcpt("z@d.test")
    c.receive_data(b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n")
    for _ in range(4):
        c.next_event()
    c.bdat(b"hi\r\n", last=True)
    c.receive_data(b"250 x done\r\n452 z full\r\n")
    assert [c.next_event(), c.next_event()] == [
        C.MessageReply(C.Reply(250, None, "x done"), 0),
        C.MessageReply(C.Reply(452, None, "z full"), 2)]


def test_encoder_examples() -> None:
    enc = CrlfEncoder()
    assert enc.encode(b"a\n.b\r\nc") + enc.finish() == b"a\r\n.b\r\nc\r\n"
    enc = CrlfEncoder()
    assert enc.encode(b"a\r") + enc.encode(b"\nb\n") + enc.finish() == b"a\r\nb\r\n"
    enc = CrlfEncoder()
    assert enc.encode(b"ends in cr\r") + enc.finish() == b"ends in cr\r\n"
    assert CrlfEncoder().finish() == b""


@given(st.lists(st.sampled_from([b"a", b".", b"\n", b"\r\n", b"\xff", b" "]), max_size=40),
       st.lists(st.integers(0, 60), max_size=8))
def test_encoder_any_split_same_bytes(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    whole = CrlfEncoder()
    expected = whole.encode(data) + whole.finish()
    points = sorted({min(x, len(data)) for x in cuts})
    enc = CrlfEncoder()
    got = b"".join(enc.encode(data[a:b])
                   for a, b in zip([0, *points], [*points, len(data)], strict=True))
    assert got + enc.finish() == expected
    # every line ends in CRLF and LF-only spool bytes come back unchanged
    assert expected.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n") + (
        b"" if not data or data.endswith(b"\n") else b"\n")
