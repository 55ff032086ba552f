"""Arbitrary server bytes never make the client raise: only events."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd.smtp import client as C
from smtpd.smtp.client import NEED_DATA, ClientProtocol
from smtpd.smtp.dotstream import DotReader

REPLYISH = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"220 hi\r\n", b"250-x\r\n", b"250 ok\r\n", b"354 go\r\n",
                         b"334 VXNlcm5hbWU6\r\n", b"550 5.1.1 no\r\n", b"\r\n", b"\n",
                         b"250-PIPELINING\r\n", b"221 bye\r\n", b"999 x\r\n"]),
    ),
    max_size=30,
)


def _drive(c: ClientProtocol) -> None:
    """React like a caller would, so every state is reachable."""
    for _ in range(100):
        ev = c.next_event()
        if ev is NEED_DATA or isinstance(ev, (C.ProtocolError, C.ConnectionClosed)):
            return
        if isinstance(ev, C.Greeting):
            c.ehlo()
        elif isinstance(ev, C.EhloDone):
            c.mail("a@b")
            c.rcpt("c@d")
            c.data()
        elif isinstance(ev, C.DataReply) and c.state is C.State.DATA:
            c.message_chunk(b"x\n.\n")
            c.end_of_data()
        elif isinstance(ev, C.AuthChallenge):
            c.auth_response()


@settings(max_examples=300, deadline=None)
@given(REPLYISH, st.booleans())
def test_arbitrary_replies(chunks: list[bytes], lmtp: bool) -> None:
    c = ClientProtocol("me.test", lmtp=lmtp)
    for chunk in chunks:
        c.receive_data(chunk)
        _drive(c)
    c.receive_data(b"")
    _drive(c)
    assert isinstance(c.next_event(), (C.ProtocolError, C.ConnectionClosed))


PIECES = st.sampled_from([b"a", b".", b"..", b"\n", b"\r\n", b"\xff", b" ", b"\x00"])


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=60), st.lists(st.integers(0, 200), max_size=8))
def test_message_chunks_round_trip_through_the_server_reader(
        pieces: list[bytes], cuts: list[int]) -> None:
    """Whatever the chunking, the server's DATA reader gets back the message
    (LF line ends), the terminator comes only at the end, nothing is bare."""
    data = b"".join(pieces)
    c = ClientProtocol("me.test")
    c.receive_data(b"220 hi\r\n")
    c.next_event()
    c.data()
    c.receive_data(b"354 go\r\n")
    c.next_event()
    bounds = sorted({min(x, len(data)) for x in cuts} | {0, len(data)})
    wire = b"".join(c.message_chunk(data[a:b]) for a, b in itertools.pairwise(bounds))
    wire += c.end_of_data()
    reader = DotReader(max_size=10**6, max_line=10**6)
    buf = bytearray(wire)
    out = reader.read(buf)
    assert reader.done and reader.error is None and buf == bytearray()
    expected = data.replace(b"\r\n", b"\n")
    if expected and not expected.endswith(b"\n"):
        expected += b"\n"
    assert out == expected
