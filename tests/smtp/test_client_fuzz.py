"""Arbitrary server bytes never make the client raise: only events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd.smtp import client as C
from smtpd.smtp.client import NEED_DATA, ClientProtocol

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
