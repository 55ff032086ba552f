"""MtaSession sends BDAT (RFC 3030) to a peer offering CHUNKING, DATA otherwise."""

from __future__ import annotations

import io

import pytest

from smtpd.mta import session as S
from smtpd.mta.session import MtaSession
from smtpd.mta.transfer import Recipient, Status, TransferResult
from tests.mta.sink import Sink, SinkConfig
from tests.mta.test_mta_session import config, relay_one, run, statuses

MESSAGE = b"Subject: test\n\n.leading dot\nbody\n.\nend\n"


def bdat_commands(sink: Sink) -> list[str]:
    return [c for c in sink.commands if c.startswith(("BDAT", "DATA"))]


@pytest.mark.parametrize("pipelining", [True, False])
def test_bdat_when_offered_same_bytes_as_data(pipelining: bool) -> None:
    rcpts = [Recipient(1, "ok@dest.test"), Recipient(2, "gone@dest.test")]
    replies = {"gone@dest.test": b"550 5.1.1 No such user\r\n"}
    chunked = Sink(SinkConfig(chunking=True, pipelining=pipelining, rcpt_replies=replies))
    result = run(chunked, lambda port: relay_one(port, config(), MESSAGE, rcpts))
    assert statuses(result) == [(1, Status.OK, "250 2.0.0 queued"),
                                (2, Status.PERMFAIL, "550 5.1.1 No such user")]
    got = chunked.messages[0]
    # No dot-stuffing, CRLF line ends, one LAST chunk for a small message.
    assert got.wire == MESSAGE.replace(b"\n", b"\r\n") and got.chunks == [len(got.wire)]
    assert bdat_commands(chunked) == [f"BDAT {len(got.wire)} LAST"]
    plain = Sink(SinkConfig(rcpt_replies=replies))
    run(plain, lambda port: relay_one(port, config(), MESSAGE, rcpts))
    assert bdat_commands(plain) == ["DATA"]
    assert plain.messages[0].content == got.content == MESSAGE


@pytest.mark.parametrize("pipelining", [True, False])
def test_large_message_in_several_chunks(monkeypatch: pytest.MonkeyPatch,
                                         pipelining: bool) -> None:
    monkeypatch.setattr(S, "BDAT_CHUNK", 10)
    message = b"".join(b"line %d\n" % i for i in range(30)) + b"no newline at end"
    sink = Sink(SinkConfig(chunking=True, pipelining=pipelining))
    result = run(sink, lambda port: relay_one(port, config(), message,
                                              [Recipient(1, "a@dest.test")]))
    assert statuses(result) == [(1, Status.OK, "250 2.0.0 queued")]
    got = sink.messages[0]
    assert got.content == message + b"\n"
    assert len(got.chunks) == -(-len(message) // 10)
    assert sum(got.chunks) == len(message.replace(b"\n", b"\r\n")) + 2


def test_empty_message_is_bdat_0_last() -> None:
    sink = Sink(SinkConfig(chunking=True))
    run(sink, lambda port: relay_one(port, config(), b"", [Recipient(1, "a@dest.test")]))
    assert bdat_commands(sink) == ["BDAT 0 LAST"] and sink.messages[0].wire == b""


def test_no_bdat_when_every_recipient_is_refused() -> None:
    sink = Sink(SinkConfig(chunking=True, rcpt_replies={"a@dest.test": b"550 5.1.1 no\r\n"}))
    result = run(sink, lambda port: relay_one(port, config(), MESSAGE,
                                              [Recipient(1, "a@dest.test")]))
    assert statuses(result) == [(1, Status.PERMFAIL, "550 5.1.1 no")]
    assert bdat_commands(sink) == []


def test_refused_chunk_fails_the_message_and_the_session_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "BDAT_CHUNK", 8)
    sink = Sink(SinkConfig(chunking=True, chunk_reply=b"552 5.3.4 too big\r\n"))

    async def body(port: int) -> tuple[TransferResult, TransferResult]:
        session = await MtaSession.open("127.0.0.1", port, config())
        try:
            first = await session.send("me@src.test", [Recipient(1, "a@dest.test")],
                                       io.BytesIO(MESSAGE * 3))
            second = await session.send("me@src.test", [Recipient(2, "b@dest.test")],
                                        io.BytesIO(b"short\n"))
            return first, second
        finally:
            await session.quit()

    first, second = run(sink, body)
    assert statuses(first) == [(1, Status.PERMFAIL, "552 5.3.4 too big")]
    # the second transaction started with RSET, on the same connection
    assert statuses(second) == [(2, Status.OK, "250 2.0.0 queued")]
    assert sink.connections == 1 and "RSET" in sink.commands
    assert [m.recipients for m in sink.messages] == [["b@dest.test"]]
    # RFC 3030 §2: no more chunks after the refusal (the window may hold a few)
    assert len([c for c in sink.commands if c.startswith("BDAT")]) <= S.BDAT_WINDOW + 1


def test_lmtp_keeps_data() -> None:
    sink = Sink(SinkConfig(chunking=True, lmtp=True))
    run(sink, lambda port: relay_one(port, config(lmtp=True), MESSAGE,
                                     [Recipient(1, "a@dest.test")]))
    assert bdat_commands(sink) == ["DATA"]
