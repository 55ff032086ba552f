"""Fuzz: no network input makes the protocol raise, and every reply it asks
for parses back as a well-formed SMTP reply."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_driver import Driver, b64, default_answer

from smtpd.smtp import events as E
from smtpd.smtp import reply as R
from smtpd.smtp.protocol import PAUSED, ServerProtocol
from smtpd.smtp.reply import Reply

_PIECES = [
    b"EHLO c.test\r\n",
    b"HELO c.test\r\n",
    b"MAIL FROM:<a@b.test>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=x+2By\r\n",
    b"MAIL FROM:<\xc3\xa9@b.test> SMTPUTF8\r\n",
    b"RCPT TO:<c@d.test>\r\n",
    b"RCPT TO:<c@d.test> NOTIFY=NEVER ORCPT=rfc822;c@d.test\r\n",
    b'RCPT TO:<"q u"@[127.0.0.1]>\r\n',
    b"DATA\r\n",
    b"body\r\n",
    b"..dots\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r",
    b"\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY x\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"*\r\n",
    (b64("alice") + "\r\n").encode(),
    (b64(b"\0alice\0secret") + "\r\n").encode(),
    b"QUIT\r\n",
    b"\x00\xff\xfe",
    b"x" * 700,
    b"MAIL FROM:<" + b"a" * 300 + b">\r\n",
]


def _chaotic_answer(choices: list[bool]) -> object:
    """Accept or refuse commands at random (from the fuzz input)."""
    it = iter(choices)

    def answer(proto: ServerProtocol, event: E.Event) -> Reply | None:
        reply = default_answer(proto, event)
        if reply is not None and reply.is_positive and not next(it, True):
            if isinstance(event, (E.AuthChallenge, E.ProtocolError)):
                return reply
            return Reply(550, "5.7.1", "refused")
        return reply

    return answer


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=30)), max_size=40),
    st.lists(st.integers(1, 50), max_size=30),
    st.lists(st.booleans(), max_size=40),
    st.booleans(),
)
def test_no_input_makes_the_protocol_raise(
    pieces: list[bytes], sizes: list[int], choices: list[bool], eof: bool
) -> None:
    d = Driver(
        answer=_chaotic_answer(choices),  # type: ignore[arg-type]
        auth_mechanisms=("PLAIN", "LOGIN"),
        starttls_available=True,
        auth_plaintext=True,
        max_bad_commands=25,
        max_message_size=200,
        max_text_line=100,
    )
    d.feed(b"".join(pieces), sizes)
    if eof and not d.p.closed:
        d.eof()
    replies = d.replies()
    assert replies[0].code == 220
    assert b"".join(r.to_bytes() for r in replies) == bytes(d.out)
    assert R.TOO_MANY_ERRORS not in replies[:-1]
    if d.p.closed:
        # nothing is read once the connection must close
        assert d.p.next_event() is PAUSED


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_raw_bytes_after_ehlo(data: bytes) -> None:
    d = Driver().feed(b"EHLO c.test\r\n" + data).eof()
    assert d.replies()[0].code == 220
