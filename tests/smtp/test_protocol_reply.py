"""Reply serialization and the client-side multi-line reply parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpd.smtp import reply as R
from smtpd.smtp.reply import Reply, ReplyError, ReplyParser


def test_serialization() -> None:
    assert R.OK.to_bytes() == b"250 2.0.0 Ok\r\n"
    assert Reply(334, None, "").to_bytes() == b"334 \r\n"
    assert R.HELP.to_bytes().count(b"214-2.0.0 ") == 3
    assert Reply(250, None, ["a", "b"]).to_bytes() == b"250-a\r\n250 b\r\n"
    assert Reply(250, None, ["only"]) == Reply(250, None, "only")
    assert str(R.TOO_MANY_RCPT) == "451 4.5.3 Too many recipients: Too many recipients"


@pytest.mark.parametrize(
    "code, enhanced, text",
    [
        (199, None, "x"),
        (600, None, "x"),
        (250, "5.0.0", "x"),
        (250, "2.0", "x"),
        (250, None, "a\r\nb"),
    ],
)
def test_invalid_replies(code: int, enhanced: str | None, text: str) -> None:
    with pytest.raises(ValueError):
        Reply(code, enhanced, text)


def test_echoed_client_text_is_made_printable() -> None:
    reply = R.unsupported_rcpt_option("FOO=\x1b[31m")
    assert reply.to_bytes() == b"503 Unsupported option FOO=?[31m\r\n"


def test_parser_multiline_and_enhanced() -> None:
    wire = b"250-mx Hello\r\n250-8BITMIME\r\n250 HELP\r\n550 5.1.1 No such user\r\n"
    replies = ReplyParser().feed(wire)
    assert replies == [
        Reply(250, None, ["mx Hello", "8BITMIME", "HELP"]),
        Reply(550, "5.1.1", "No such user"),
    ]
    assert b"".join(r.to_bytes() for r in replies) == wire
    helps = ReplyParser().feed(R.HELP.to_bytes())
    assert helps == [R.HELP]
    mixed = b"250-2.0.0 a\r\n250 b\r\n"
    assert [r.to_bytes() for r in ReplyParser().feed(mixed)] == [mixed]


def test_parser_byte_by_byte_and_lenient_lf() -> None:
    parser = ReplyParser()
    got = []
    for b in b"220 mx ESMTP\n221 2.0.0 Bye\r\n354":
        got += parser.feed(bytes([b]))
    assert got == [Reply(220, None, "mx ESMTP"), R.BYE]
    assert parser.feed(b" go\r\n") == [Reply(354, None, "go")]
    assert ReplyParser().feed(b"250\r\n") == [Reply(250, None, "")]


@pytest.mark.parametrize(
    "wire",
    [
        b"hello\r\n",
        b"2500 x\r\n",
        b"250-a\r\n251 b\r\n",
        b"250x\r\n",
        b"099 x\r\n",
        b"250 a\x00\r\n",
    ],
)
def test_parser_errors(wire: bytes) -> None:
    with pytest.raises(ReplyError):
        ReplyParser().feed(wire)


def test_parser_bounds() -> None:
    with pytest.raises(ReplyError):
        ReplyParser().feed(b"250 " + b"x" * 5000)
    with pytest.raises(ReplyError):
        ReplyParser().feed(b"250-x\r\n" * 101)


_LINE = st.text(
    st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=20
)


@given(
    st.sampled_from([220, 250, 354, 421, 550]),
    st.lists(_LINE, min_size=1, max_size=4),
    st.lists(st.integers(1, 9), max_size=20),
)
def test_parser_roundtrip(code: int, lines: list[str], sizes: list[int]) -> None:
    reply = Reply(code, None, lines)
    wire = reply.to_bytes()
    parser = ReplyParser()
    got: list[Reply] = []
    pos = 0
    for size in [*sizes, len(wire)]:
        got += parser.feed(wire[pos : pos + size])
        pos += size
    assert len(got) == 1
    assert got[0].to_bytes() == wire
