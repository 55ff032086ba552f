"""DATA: dot-unstuffing, CRLF.CRLF only, smuggling, size and line limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_driver import Driver

from smtpd.smtp import events as E
from smtpd.smtp import reply as R
from smtpd.smtp.dotstream import DotReader

HEAD = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"


def run(body: bytes, sizes: list[int] | None = None, **kw: object) -> Driver:
    return Driver(**kw).feed(HEAD + body, sizes)


def reference(wire: bytes, max_size: int = 10**9, max_line: int = 65535) -> tuple[bytes, bytes]:
    """A slow, obviously-correct model of the DATA rules: returns (message,
    rest after the terminator) or raises ValueError(reason) at the end."""
    lines = []
    pos = 0
    prev_crlf = True
    bad = ""
    while True:
        nl = wire.find(b"\n", pos)
        if nl < 0:
            raise EOFError
        line = wire[pos : nl + 1]
        pos = nl + 1
        crlf = line.endswith(b"\r\n")
        if crlf and prev_crlf and line == b".\r\n":
            break
        prev_crlf = crlf
        content = line[:-2] if crlf else line[:-1]
        if len(line) > max_line:
            bad = bad or "long"
        if not crlf or b"\r" in content:
            bad = bad or "bare"
        lines.append((content[1:] if content.startswith(b".") else content) + b"\n")
    message = b"".join(lines)
    if bad:
        raise ValueError(bad)
    if len(message) > max_size:
        raise ValueError("big")
    return message, wire[pos:]


def test_dot_unstuffing_and_lf_normalization() -> None:
    d = run(b"Subject: x\r\n\r\n..\r\n.hidden\r\n...two\r\nend\r\n.\r\n")
    assert d.messages == [b"Subject: x\n\n.\nhidden\n..two\nend\n"]
    end = d.of(E.DataEnd)[0]
    assert end == E.DataEnd(size=len(d.messages[0]), too_big=False, error=None)


def test_empty_message_and_next_transaction() -> None:
    d = run(b".\r\nMAIL FROM:<a@b.test>\r\n")
    assert d.messages == [b""]
    assert d.lines()[-1] == "250 2.0.0 Ok"


def test_nul_and_8bit_bytes_are_kept() -> None:
    d = run(b"a\x00b\r\n\xff\xfe\r\n.\r\n")
    assert d.messages == [b"a\x00b\n\xff\xfe\n"]


@pytest.mark.parametrize(
    "smuggle",
    [
        b"\n.\n",
        b"\r.\r",
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n\x00.\r\n",
    ],
)
def test_smuggling_never_ends_data(smuggle: bytes) -> None:
    evil = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@d.test>\r\nDATA\r\nforged\r\n"
    body = b"Subject: hi\r\n\r\nbody" + smuggle + evil + b"\r\n.\r\n"
    for sizes in (None, [1] * len(body) * 2):
        d = run(body, sizes)
        mails = d.of(E.MailFrom)
        assert len(mails) == 1, "smuggled command was executed"
        ends = d.of(E.DataEnd)
        assert len(ends) == 1
        if smuggle == b"\r\n\x00.\r\n":
            # A NUL before the dot is plain data: accepted, nothing ends early.
            assert ends[0] == E.DataEnd(ends[0].size)
            assert b"forged" in d.messages[0]
            continue
        assert ends[0].error == R.BARE_LINE_ENDING
        assert d.lines()[-1] == (
            "550 5.5.2 Syntax error: bare CR or LF in message data, see RFC 5321 section 2.3.8"
        )
        # What came before the bad line may have streamed; nothing after it.
        assert b"forged" not in d.messages[0] and b"MAIL" not in d.messages[0]


def test_bare_lf_message_is_drained_then_session_continues() -> None:
    d = run(b"line one\nline two\r\n.\r\nNOOP\r\n")
    assert d.of(E.DataEnd)[0].error == R.BARE_LINE_ENDING  # type: ignore[attr-defined]
    assert d.lines()[-1] == "250 2.0.0 Ok"


def test_size_limit_drains_then_552() -> None:
    body = b"x" * 99 + b"\r\n"  # 100 bytes once LF-normalized
    d = run(body * 3 + b".\r\nNOOP\r\n", max_message_size=300)
    assert d.of(E.DataEnd)[0] == E.DataEnd(300)
    d = run(body * 3 + b"y\r\n.\r\nNOOP\r\n", max_message_size=300)
    end = d.of(E.DataEnd)[0]
    assert isinstance(end, E.DataEnd) and end.too_big and end.size == 302
    assert end.error == R.MESSAGE_TOO_BIG
    assert len(d.messages[0]) <= 300
    assert d.lines()[-2:] == [
        "552 5.3.4 Message too big for system: Transaction failed, message too big",
        "250 2.0.0 Ok",
    ]


@pytest.mark.parametrize("sizes", [None, [1] * 3000, [7] * 500])
def test_text_line_limit(sizes: list[int] | None) -> None:
    ok = b"a" * 998 + b"\r\n"  # exactly 1000 octets with CRLF
    d = run(ok + b".\r\n", sizes, max_text_line=1000)
    assert d.of(E.DataEnd)[0] == E.DataEnd(999)
    long = b"a" * 999 + b"\r\n"
    d = run(long + b".\r\nNOOP\r\n", sizes, max_text_line=1000)
    assert d.of(E.DataEnd)[0].error == R.DATA_LINE_TOO_LONG  # type: ignore[attr-defined]
    assert d.lines()[-2:] == ["500 5.0.0 Line too long", "250 2.0.0 Ok"]


def test_long_unterminated_line_is_bounded_in_memory() -> None:
    d = run(b"a" * 200_000, max_text_line=1000)
    assert len(d.p._buf) <= 1000
    d.feed(b"\r\n.\r\n")
    assert d.of(E.DataEnd)[0].error == R.DATA_LINE_TOO_LONG  # type: ignore[attr-defined]


def test_chunks_never_hold_more_than_fed() -> None:
    d = Driver().feed(HEAD)
    for _ in range(50):
        d.feed(b"x" * 1000 + b"\r\n")
    chunks = d.of(E.DataChunk)
    assert len(chunks) == 50
    assert all(len(c.data) == 1001 for c in chunks)  # type: ignore[attr-defined]


_WIRE_ATOMS = st.sampled_from(
    [b"a", b"b", b".", b"\r\n", b"\r", b"\n", b"..", b"\x00", b"\xff", b"\r\n.\r\n", b"xx" * 20]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_WIRE_ATOMS, max_size=60).map(b"".join),
    st.lists(st.integers(1, 30), max_size=40),
    st.integers(5, 200),
    st.integers(3, 60),
)
def test_dot_reader_matches_reference_model(
    wire: bytes, sizes: list[int], max_size: int, max_line: int
) -> None:
    wire += b"\r\n.\r\nTAIL"
    try:
        expected: tuple[bytes, bytes] | str = reference(wire, max_size, max_line)
    except ValueError as err:
        expected = str(err)
    reader = DotReader(max_size, max_line)
    buf = bytearray()
    out = bytearray()
    pos = 0
    for size in [*sizes, len(wire)]:
        buf += wire[pos : pos + size]
        pos += size
        out += reader.read(buf)
        if reader.done:
            break
    assert reader.done
    error = reader.final_error()
    if isinstance(expected, str):
        want = {
            "big": R.MESSAGE_TOO_BIG,
            "bare": R.BARE_LINE_ENDING,
            "long": R.DATA_LINE_TOO_LONG,
        }[expected]
        assert error == want
    else:
        message, rest = expected
        assert error is None
        assert bytes(out) == message
        assert reader.size == len(message)
        assert bytes(buf) + wire[pos:] == rest
