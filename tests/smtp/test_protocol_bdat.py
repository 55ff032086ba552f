"""BDAT (RFC 3030 CHUNKING) and BINARYMIME in the sans-IO server protocol."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_driver import Driver, default_answer

from smtpd.smtp import events as E
from smtpd.smtp import reply as R
from smtpd.smtp.protocol import ServerProtocol, State
from smtpd.smtp.reply import Reply

TX = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"


def answer(proto: ServerProtocol, event: E.Event) -> Reply | None:
    if isinstance(event, E.BdatChunkEnd):
        return event.reply
    return default_answer(proto, event)


def bdat(*chunks: bytes, last: bool = True) -> bytes:
    out = b""
    for i, chunk in enumerate(chunks):
        end = " LAST" if last and i == len(chunks) - 1 else ""
        out += f"BDAT {len(chunk)}{end}\r\n".encode() + chunk
    return out


def run(wire: bytes, sizes: list[int] | None = None, **kw: object) -> Driver:
    d = Driver(answer=answer, **kw)
    return d.feed(wire, sizes)


def codes(d: Driver) -> list[str]:
    """Replies after the greeting and EHLO, as "code enhanced"."""
    return [f"{r.code} {r.enhanced}" if r.enhanced else str(r.code) for r in d.replies()[2:]]


def test_ehlo_offers_chunking_and_binarymime_only_when_enabled() -> None:
    assert "250-CHUNKING" in run(b"EHLO c.test\r\n").lines()
    assert not any("BINARYMIME" in x for x in run(b"EHLO c.test\r\n").lines())
    assert "250-BINARYMIME" in run(b"EHLO c.test\r\n", binarymime=True).lines()
    off = run(b"EHLO c.test\r\n", chunking=False, binarymime=True).lines()
    assert not any("CHUNKING" in x or "BINARYMIME" in x for x in off)


def test_single_chunk_stored_like_data() -> None:
    d = run(TX + bdat(b"Subject: x\r\n\r\n.dot stays\r\nbody\r\n") + b"QUIT\r\n")
    assert d.messages == [b"Subject: x\n\n.dot stays\nbody\n"]
    assert codes(d) == ["250 2.0.0", "250 2.1.5", "250 2.0.0", "221 2.0.0"]
    starts = d.of(E.DataStart)
    assert starts == [E.DataStart(bdat=True)]
    assert d.of(E.DataEnd) == [E.DataEnd(size=len(d.messages[0]))]
    assert d.p.state is State.CLOSED


def test_several_chunks_one_reply_each_and_crlf_split_across_chunks() -> None:
    d = run(TX + bdat(b"Subject: x\r", b"\n\r\nline one\r\nli", b"ne two\r\n") + b"NOOP\r\n")
    assert d.messages == [b"Subject: x\n\nline one\nline two\n"]
    lines = d.lines()[-4:]
    assert lines == ["250 2.0.0 11 octets received", "250 2.0.0 15 octets received",
                     "250 2.0.0 1234abcd Message accepted", "250 2.0.0 Ok"]
    assert len(d.of(E.BdatChunkEnd)) == 2 and len(d.of(E.DataStart)) == 1


def test_data_never_read_as_commands_and_dot_lines_kept() -> None:
    evil = b"x\r\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@x.test>\r\nDATA\r\n"
    d = run(TX + bdat(evil) + b"QUIT\r\n")
    assert d.messages == [evil.replace(b"\r\n", b"\n")]
    assert len(d.of(E.MailFrom)) == 1 and len(d.of(E.RcptTo)) == 1
    assert codes(d)[-1] == "221 2.0.0"


def test_zero_length_last_chunk_and_empty_message() -> None:
    d = run(TX + bdat(b"Subject: a\r\n", b"") + b"MAIL FROM:<>\r\nRCPT TO:<c@d.test>\r\n"
            + b"BDAT 0 LAST\r\n")
    assert d.messages == [b"Subject: a\n", b""]
    assert "250 2.0.0 12 octets received" in d.lines()


def test_unterminated_last_line_gets_a_line_end() -> None:
    d = run(TX + bdat(b"Subject: a\r\n\r\nno newline"))
    assert d.messages == [b"Subject: a\n\nno newline\n"]


def test_bare_lf_or_cr_refused_after_the_whole_message() -> None:
    for body in (b"a\nb\r\n", b"a\rb\r\n", b"trailing cr\r"):
        d = run(TX + bdat(body) + b"NOOP\r\n")
        assert d.lines()[-2:] == [str(R.BARE_LINE_ENDING).replace(" / ", ""), "250 2.0.0 Ok"]
        end = d.of(E.DataEnd)[0]
        assert isinstance(end, E.DataEnd) and end.error == R.BARE_LINE_ENDING


def test_too_big_fails_at_the_chunk_that_crossed_and_drains_the_rest() -> None:
    wire = TX + bdat(b"a" * 40 + b"\r\n", b"b" * 40 + b"\r\n", b"RSET\r\nQUIT\r\n") + b"RSET\r\n"
    d = run(wire, max_message_size=60)
    assert codes(d) == ["250 2.0.0", "250 2.1.5", "250 2.0.0", "552 5.3.4", "503 5.5.1",
                        "250 2.0.0"]
    end = d.of(E.DataEnd)[0]
    assert isinstance(end, E.DataEnd) and end.too_big and end.error == R.MESSAGE_TOO_BIG
    assert len(d.of(E.Rset)) == 1  # the RSET inside the last chunk was data
    assert d.p.state is State.READY


def test_size_limit_counts_stored_bytes_across_chunks() -> None:
    body = b"x" * 28 + b"\r\n"  # 29 bytes stored per chunk (LF)
    ok = run(TX + bdat(body, body), max_message_size=58)
    assert ok.messages == [(b"x" * 28 + b"\n") * 2]
    big = run(TX + bdat(body, body), max_message_size=57)
    assert codes(big)[-1] == "552 5.3.4"


def test_mixing_data_and_bdat_is_a_503() -> None:
    d = run(TX + b"BDAT 4\r\nab\r\n" + b"DATA\r\nRSET\r\nMAIL FROM:<a@b.test>\r\n")
    assert codes(d)[2:] == ["250 2.0.0", "503 5.5.1", "250 2.0.0", "250 2.0.0"]
    assert not d.of(E.DataEnd)  # the RSET dropped the half message
    d = run(TX + b"DATA\r\nx\r\n.\r\n" + bdat(b"QUIT\r\n") + b"NOOP\r\n")
    assert codes(d)[2:] == ["354", "250 2.0.0", "503 5.5.1", "250 2.0.0"]


def test_bdat_out_of_sequence_is_drained() -> None:
    # Before RCPT, after LAST, and before MAIL: 503, and the octets (which
    # here look like commands) are skipped.
    d = run(b"EHLO c.test\r\n" + bdat(b"QUIT\r\n") + b"MAIL FROM:<a@b.test>\r\n"
            + bdat(b"QUIT\r\n") + b"RCPT TO:<c@d.test>\r\n" + bdat(b"x\r\n")
            + bdat(b"QUIT\r\n") + b"NOOP\r\n")
    assert codes(d) == ["503 5.5.1", "250 2.0.0", "503 5.5.4", "250 2.1.5", "250 2.0.0",
                        "503 5.5.1", "250 2.0.0"]
    assert d.messages == [b"x\n"]


def test_rset_between_chunks_discards_and_a_new_transaction_works() -> None:
    d = run(TX + b"BDAT 5\r\nabc\r\n" + b"RSET\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<e@f.test>\r\n"
            + bdat(b"new\r\n"))
    after = d.events[d.events.index(E.Rset()):]
    assert b"".join(e.data for e in after if isinstance(e, E.DataChunk)) == b"new\n"
    assert [type(e).__name__ for e in d.merged()][-8:] == [
        "DataChunk", "BdatChunkEnd", "Rset", "MailFrom", "RcptTo", "DataStart", "DataChunk",
        "DataEnd"]
    assert len(d.of(E.Rset)) == 1 and d.lines()[-1].startswith("250 2.0.0 1234abcd")


def test_between_chunks_only_some_commands() -> None:
    d = run(TX + b"BDAT 4\r\nab\r\n" + b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<a@b.test>"
            + b"\r\nNOOP\r\n" + bdat(b"c\r\n"))
    assert codes(d)[2:] == ["250 2.0.0", "503 5.5.1", "503 5.5.1", "503 5.5.1", "250 2.0.0",
                            "250 2.0.0"]
    assert d.messages == [b"ab\nc\n"]


def test_bdat_syntax() -> None:
    for line in (b"BDAT\r\n", b"BDAT x\r\n", b"BDAT -1\r\n", b"BDAT " + b"9" * 21 + b"\r\n"):
        d = run(TX + line + b"NOOP\r\n")
        assert d.lines()[-1] == str(R.BDAT_NO_SIZE)
        assert d.p.closed  # the octets cannot be told from commands
    d = run(TX + b"BDAT 6 LATER\r\nQUIT\r\n" + b"BDAT 6 last\r\nab\r\nc\n")
    assert codes(d)[2:] == ["501 5.5.4", "550 5.5.2"]  # bare LF in "c\n", "last" is LAST
    assert [e.error for e in d.events if isinstance(e, E.DataEnd)] == [R.BARE_LINE_ENDING]


def refuse_start(proto: ServerProtocol, event: E.Event) -> Reply | None:
    if isinstance(event, E.DataStart):
        return Reply(451, "4.3.0", "Temporary failure")
    return answer(proto, event)


def test_refused_first_chunk_kills_the_transaction_until_rset() -> None:
    wire = TX + bdat(b"QUIT\r\n", b"NOOP\r\n") + b"RSET\r\nNOOP\r\n"
    d = Driver(answer=refuse_start).feed(wire)
    assert codes(d) == ["250 2.0.0", "250 2.1.5", "451 4.3.0", "503 5.5.1", "250 2.0.0",
                        "250 2.0.0"]
    assert "RSET required" in d.lines()[-3]
    assert not d.of(E.DataChunk) and not d.of(E.DataEnd) and not d.p.closed


def test_bdat_without_chunking_is_unrecognized_but_drained() -> None:
    d = run(TX + bdat(b"QUIT\r\n") + b"NOOP\r\n", chunking=False)
    assert codes(d)[2:] == ["500 5.5.1", "250 2.0.0"]


def test_no_pipelining_listener_still_takes_bdat_data() -> None:
    d = Driver(answer=answer, pipelining=False)
    for line in (b"EHLO c.test\r\n", b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<c@d.test>\r\n",
                 bdat(b"hello\r\n")):
        d.feed(line)
    assert d.messages == [b"hello\n"] and not d.p.closed


def test_eof_inside_a_chunk() -> None:
    d = run(TX + b"BDAT 100 LAST\r\nshort\r\n").eof()
    assert isinstance(d.events[-1], E.ConnectionClosed) and not d.of(E.DataEnd)


def test_line_too_long() -> None:
    d = run(TX + bdat(b"a" * 50, b"b" * 50 + b"\r\n"), max_text_line=80)
    assert d.of(E.DataEnd)[0] == E.DataEnd(size=0, error=R.DATA_LINE_TOO_LONG)


# -- BINARYMIME ---------------------------------------------------------------


def test_binarymime_refused_unless_offered() -> None:
    d = run(b"EHLO c.test\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\n")
    assert codes(d) == ["503 5.5.4"]
    d = run(b"EHLO c.test\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\n", binarymime=True,
            chunking=False)
    assert codes(d) == ["503 5.5.4"]


def test_binarymime_needs_bdat_and_keeps_bytes() -> None:
    head = b"EHLO c.test\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\nRCPT TO:<c@d.test>\r\n"
    d = run(head + b"DATA\r\n", binarymime=True)
    assert d.lines()[-1] == str(R.BINARYMIME_NEEDS_BDAT)
    raw = b"Content-Type: application/octet-stream\r\n\r\n\x00\r\r\n\n.\r\n\xff"
    d = run(head + bdat(raw[:7], raw[7:]) + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
            + b"DATA\r\nx\r\n.\r\n", binarymime=True)
    assert d.messages == [raw, b"x\n"]  # the next transaction is 7BIT again


# -- any chunking, any network split: the stored message is the same ---------

lines_st = st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(
    b"\n", b"")), max_size=12)


@settings(max_examples=200, deadline=None)
@given(lines=lines_st, cuts=st.lists(st.integers(0, 400), max_size=6),
       sizes=st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_any_chunking_any_split(lines: list[bytes], cuts: list[int], sizes: list[int]) -> None:
    body = b"".join(line + b"\r\n" for line in lines)
    points = sorted({min(c, len(body)) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    d = run(TX + bdat(*chunks) + b"NOOP\r\n", sizes * 200)
    assert d.messages == [body.replace(b"\r\n", b"\n")]
    assert d.lines()[-1] == "250 2.0.0 Ok"
    assert len(d.of(E.BdatChunkEnd)) == len(chunks) - 1


_PIECES = [TX, b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n", b"RCPT TO:<c@d.test>\r\n",
           b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"BDAT 0 LAST\r\n", b"BDAT x\r\n",
           b"BDAT 2 FOO\r\n", b"DATA\r\n", b".\r\n", b"ab\r\n", b"\r", b"\n", b"RSET\r\n",
           b"NOOP\r\n", b"EHLO c.test\r\n", b"QUIT\r\n", b"x" * 90]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=12)), max_size=30),
       st.lists(st.integers(1, 40), max_size=20), st.lists(st.booleans(), max_size=30),
       st.booleans())
def test_fuzz_bdat_never_raises(pieces: list[bytes], sizes: list[int], choices: list[bool],
                                binary: bool) -> None:
    it = iter(choices)
    sent: list[Reply] = []

    def chaotic(proto: ServerProtocol, event: E.Event) -> Reply | None:
        reply = answer(proto, event)
        refuse = reply is not None and reply.is_positive and not next(it, True)
        if refuse and not isinstance(event, E.ProtocolError):
            reply = Reply(451, "4.3.0", "refused")
        if reply is not None and not (event == E.DataStart(bdat=True) and reply.code == 354):
            sent.append(reply)  # what must reach the wire, in order
        return reply

    d = Driver(answer=chaotic, binarymime=binary, max_message_size=60, max_text_line=40,
               max_bad_commands=100)
    d.feed(b"".join(pieces), sizes).eof()
    replies = d.replies()
    assert b"".join(r.to_bytes() for r in replies) == bytes(d.out)
    assert d.p.closed
    # one reply per event that waits for one, in order; none for BDAT's 354
    assert replies[1:] == sent
