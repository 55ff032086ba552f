"""FilterConn and the data-line pipeline against an in-process fake filter on
a socketpair: handshake, decisions, timeouts, a filter that dies, streaming."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import pytest

from smtpd.filter import session as fsession
from smtpd.filter.builtin import Facts
from smtpd.filter.conn import FilterConn, FilterDown
from smtpd.filter.lines import Decision
from smtpd.filter.runtime import Element
from smtpd.filter.session import FILTER_DOWN, SessionFilters

LOG = logging.getLogger("test.filter")
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def start(script: Script, registers: list[str]) -> tuple[FilterConn, asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    conn = FilterConn("fake", loop, LOG, 300, None)
    conn.attach(ours.detach(), 1)

    async def fake() -> None:
        reader, writer = await asyncio.open_unix_connection(sock=theirs)
        while (await reader.readline()).strip() != b"config|ready":
            pass
        for r in registers:
            writer.write(f"register|{r}\n".encode())
        writer.write(b"register|ready\n")
        await script(reader, writer)

    task = loop.create_task(fake())
    for _ in range(100):
        if conn.ready:
            break
        await asyncio.sleep(0.01)
    assert conn.ready
    return conn, task


def facts() -> Facts:
    return Facts(rdns="", fcrdns=False, src="127.0.0.1")


def test_decisions_and_reports() -> None:
    seen: list[str] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := (await reader.readline()).decode().rstrip("\n"):
            seen.append(line)
            f = line.split("|")
            if f[0] == "filter":
                answer = "reject|550 5.7.1 nope" if f[7] == "bad@x" else "rewrite|new@x"
                writer.write(f"filter-result|{f[5]}|{f[6]}|{answer}\n".encode())

    async def main() -> None:
        conn, task = await start(script, ["filter|smtp-in|mail-from",
                                          "report|smtp-in|link-connect"])
        assert conn.filters == {"mail-from"} and conn.reports == {"link-connect"}
        runtime = type("R", (), {"conns": {"fake": conn}, "tables": {}})()
        sf = SessionFilters(runtime, (Element("fake", conn="fake"),), 0xABC, LOG, "s")
        sf.report("link-connect", "", "fail", "127.0.0.1:1", "127.0.0.1:25")
        sf.report("tx-begin", "00000001")  # not registered: never sent
        refused = await sf.phase("mail-from", facts(), ("bad@x",))
        assert refused.decision is Decision.REJECT and refused.reply is not None
        assert (refused.reply.code, refused.reply.enhanced) == (550, "5.7.1")
        rewritten = await sf.phase("mail-from", facts(), ("ok@x",))
        assert rewritten.rewrite == "new@x" and rewritten.reply is None
        assert (await sf.phase("rcpt-to", facts(), ("r@x",))).reply is None  # not registered
        conn.close()
        task.cancel()

    asyncio.run(main())
    assert seen[0].startswith("report|0.7|") and "|link-connect|0000000000000abc|" in seen[0]
    assert not any("tx-begin" in s for s in seen)


def test_silent_filter_times_out_and_dead_filter_refuses() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()  # reads the request, never answers
        await asyncio.sleep(0.3)
        writer.close()  # then dies

    async def main() -> None:
        conn, _task = await start(script, ["filter|smtp-in|helo"])
        with pytest.raises(FilterDown):
            await conn.request("helo", 1, ("x",), timeout=0.1)
        for _ in range(100):
            if not conn.ready:
                break
            await asyncio.sleep(0.01)
        assert not conn.ready
        runtime = type("R", (), {"conns": {"fake": conn}, "tables": {}})()
        sf = SessionFilters(runtime, (Element("fake", conn="fake"),), 1, LOG, "s")
        assert sf.down() == ["fake"]
        verdict = await sf.phase("helo", facts(), ("x",))
        assert verdict.reply == FILTER_DOWN and verdict.decision is Decision.DISCONNECT

    asyncio.run(main())


def test_data_lines_stream_through_two_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsession, "REQUEST_TIMEOUT", 2.0)

    def echo(tag: str, events: list[str]) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := (await reader.readline()).decode().rstrip("\n"):
                f = line.split("|", 7)
                events.append(f[7])
                out = f[7] if f[7] == "." else f"{tag}{f[7]}"
                writer.write(f"filter-dataline|{f[5]}|{f[6]}|{out}\n".encode())
        return script

    async def main() -> None:
        e1: list[str] = []
        e2: list[str] = []
        c1, t1 = await start(echo("1:", e1), ["filter|smtp-in|data-line"])
        c2, t2 = await start(echo("2:", e2), ["filter|smtp-in|data-line"])
        c2.name = "fake2"
        runtime = type("R", (), {"conns": {"a": c1, "b": c2}, "tables": {}})()
        sf = SessionFilters(runtime, (Element("a", conn="a"), Element("b", conn="b")), 7,
                            LOG, "s")
        out: list[bytes] = []
        assert sf.streaming()
        sf.data_begin(out.append)
        await sf.data_feed(b"Subject: x\n.dot\npart")
        for _ in range(100):  # streamed: lines arrive before the end of the message
            if len(e2) >= 2:
                break
            await asyncio.sleep(0.01)
        assert e1[:2] == ["Subject: x", "..dot"] and e2[:2] == ["1:Subject: x", "1:..dot"]
        await sf.data_feed(b"ial\n")
        assert await sf.data_end() is None
        assert b"".join(out) == b"2:1:Subject: x\n2:1:..dot\n2:1:partial\n"
        assert e1[-1] == "." and e2[-1] == "."
        for c, t in ((c1, t1), (c2, t2)):
            c.close()
            t.cancel()

    asyncio.run(main())


def test_filter_that_never_ends_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsession, "REQUEST_TIMEOUT", 0.2)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline():
            pass  # swallows every line

    async def main() -> None:
        conn, task = await start(script, ["filter|smtp-in|data-line"])
        runtime = type("R", (), {"conns": {"a": conn}, "tables": {}})()
        sf = SessionFilters(runtime, (Element("a", conn="a"),), 9, LOG, "s")
        sf.data_begin(lambda _b: None)
        await sf.data_feed(b"line\n")
        assert await sf.data_end() == FILTER_DOWN
        conn.close()
        task.cancel()

    asyncio.run(main())


def test_protocol_violation_marks_the_filter_down() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(b"this is not the protocol\n")
        await asyncio.sleep(1)

    async def main() -> None:
        conn, task = await start(script, [])
        for _ in range(100):
            if not conn.ready:
                break
            await asyncio.sleep(0.01)
        assert not conn.ready
        task.cancel()

    asyncio.run(main())


def test_filter_dying_mid_message_swallows_the_rest() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()  # dies after the first line

    async def main() -> None:
        conn, _task = await start(script, ["filter|smtp-in|data-line"])
        runtime = type("R", (), {"conns": {"a": conn}, "tables": {}})()
        sf = SessionFilters(runtime, (Element("a", conn="a"),), 9, LOG, "s")
        out: list[bytes] = []
        sf.data_begin(out.append)
        await sf.data_feed(b"first\n")
        for _ in range(100):
            if not conn.ready:
                break
            await asyncio.sleep(0.01)
        await sf.data_feed(b"second\n")  # no exception, nothing written unfiltered
        assert sf.piping
        assert await sf.data_end() == FILTER_DOWN
        assert out == []
        assert not sf.piping
        # and while it is down, every phase answers 421
        assert (await sf.phase("mail-from", facts(), ("a@b",))).reply == FILTER_DOWN

    asyncio.run(main())
