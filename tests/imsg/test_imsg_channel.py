"""Channel over a real socketpair on an asyncio loop."""

from __future__ import annotations

import array
import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from imsg import MAX_PAYLOAD, Channel, ChannelClosed, ChannelOverflow, Frame, FrameError, unpack
from imsg.frame import FLAG_HASFD, HEADER


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


async def until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.001)


@dataclass
class Peer:
    """Records what a Channel hands to its callbacks."""

    frames: list[Frame] = field(default_factory=list)
    closes: list[Exception | None] = field(default_factory=list)
    traces: list[tuple[str, int]] = field(default_factory=list)

    def on_frame(self, frame: Frame) -> None:
        self.frames.append(frame)

    def on_close(self, _ch: Channel, exc: Exception | None) -> None:
        self.closes.append(exc)

    def on_trace(self, direction: str, frame: Frame) -> None:
        self.traces.append((direction, frame.type))

    def channel(self, sock: socket.socket, **kw: Any) -> Channel:
        return Channel(
            sock,
            name="test",
            on_frame=self.on_frame,
            on_close=self.on_close,
            on_trace=self.on_trace,
            **kw,
        )


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def fds_open(*fds: int) -> list[bool]:
    out = []
    for fd in fds:
        try:
            os.fstat(fd)
            out.append(True)
        except OSError:
            out.append(False)
    return out


def test_frames_and_fds_cross_a_socketpair() -> None:
    async def main() -> None:
        sa, sb = pair()
        pa, pb = Peer(), Peer()
        a, b = pa.channel(sa), pb.channel(sb)
        pipes = [os.pipe() for _ in range(5)]
        # One burst: plain and flagged frames interleaved, all written at once.
        for i, (_r, w) in enumerate(pipes):
            a.compose(100 + i, {"i": i})
            a.send(200 + i, b"fd", fd=w, peerid=i)
        # The sender keeps no copy: checked before the receiver's fds exist.
        assert fds_open(*(w for _r, w in pipes)) == [False] * 5
        assert a.pending_bytes == 0 and a.frames_out == 10
        await asyncio.sleep(0.01)
        assert pb.frames == []  # nothing is read before start()
        b.start()
        await until(lambda: len(pb.frames) == 10)
        assert [f.type for f in pb.frames] == [t for i in range(5) for t in (100 + i, 200 + i)]
        assert [unpack(f.data) for f in pb.frames[::2]] == [{"i": i} for i in range(5)]
        assert all(f.pid == os.getpid() for f in pb.frames)
        for i, ((r, _w), f) in enumerate(zip(pipes, pb.frames[1::2], strict=True)):
            assert f.fd is not None and f.peerid == i and f.data == b"fd"
            os.write(f.fd, b"via %d" % i)
            assert os.read(r, 16) == b"via %d" % i
            os.close(f.fd)
            os.close(r)
        assert b.frames_in == 10 and b.bytes_in == a.bytes_out
        assert pa.traces == [("out", t) for i in range(5) for t in (100 + i, 200 + i)]
        assert pb.traces == [("in", t) for i in range(5) for t in (100 + i, 200 + i)]
        a.close()
        await until(lambda: bool(pb.closes))
        assert pb.closes == [None] and b.closed and pa.closes == []

    run(main())


def test_oversize_send_fails_at_the_sender_and_closes_the_fd() -> None:
    async def main() -> None:
        sa, sb = pair()
        a = Peer().channel(sa)
        r, w = os.pipe()
        with pytest.raises(FrameError):
            a.send(1, b"x" * (MAX_PAYLOAD + 1), fd=w)
        assert fds_open(w) == [False]
        assert a.pending_bytes == 0 and a.frames_out == 0
        os.close(r)
        a.close()
        sb.close()

    run(main())


async def raw_violation(send: Callable[[socket.socket], object]) -> Exception | None:
    sa, sb = pair()
    pb = Peer()
    b = pb.channel(sb)
    b.start()
    send(sa)
    await until(lambda: bool(pb.closes))
    await asyncio.sleep(0.01)
    sa.close()
    assert len(pb.closes) == 1 and b.closed and pb.frames == []
    return pb.closes[0]


def test_flagged_frame_without_fd_is_fatal() -> None:
    async def main() -> None:
        exc = await raw_violation(lambda s: s.send(HEADER.pack(1, 16, FLAG_HASFD, 0, 0)))
        assert isinstance(exc, FrameError)

    run(main())


def test_fd_without_flag_is_fatal_and_closed() -> None:
    async def main() -> None:
        r, w = os.pipe()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))]
        exc = await raw_violation(lambda s: s.sendmsg([HEADER.pack(1, 16, 0, 0, 0)], anc))
        assert isinstance(exc, FrameError)
        os.close(w)
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""  # the receiver closed its copy
        os.close(r)

    run(main())


def test_too_many_fds_is_ctrunc_and_fatal() -> None:
    async def main() -> None:
        r, w = os.pipe()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w] * 20))]
        exc = await raw_violation(lambda s: s.sendmsg([HEADER.pack(1, 16, FLAG_HASFD, 0, 0)], anc))
        assert isinstance(exc, FrameError) and "truncated" in str(exc)
        os.close(w)
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""
        os.close(r)

    run(main())


def test_bad_length_and_eof_mid_frame() -> None:
    async def main() -> None:
        exc = await raw_violation(lambda s: s.send(HEADER.pack(1, 8, 0, 0, 0)))
        assert isinstance(exc, FrameError)

        def half_then_close(s: socket.socket) -> None:
            s.send(HEADER.pack(1, 40, 0, 0, 0))
            s.shutdown(socket.SHUT_WR)

        exc = await raw_violation(half_then_close)
        assert isinstance(exc, FrameError) and "EOF" in str(exc)

    run(main())


async def fill(a: Channel, size: int = 8000) -> int:
    n = 0
    while not a.congested:
        a.send(7, b"y" * size)
        n += 1
    return n


def test_backpressure_congested_then_drain() -> None:
    async def main() -> None:
        sa, sb = pair()
        sa.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pa = Peer()
        a = pa.channel(sa, high_water=64 * 1024)
        events: list[str] = []
        a.on_congested = lambda: events.append("congested")
        a.on_drained = lambda: events.append("drained")
        sent = await fill(a)  # the peer does not read
        assert a.congested and a.pending_bytes > 64 * 1024 and events == ["congested"]
        drain = asyncio.ensure_future(a.drain())
        await asyncio.sleep(0.02)
        assert not drain.done()
        pb = Peer()
        b = pb.channel(sb)
        b.start()  # now the peer reads
        await drain
        assert a.pending_bytes <= 32 * 1024 and not a.congested
        assert events == ["congested", "drained"]
        await a.flush()
        assert a.pending_bytes == 0
        await until(lambda: len(pb.frames) == sent)
        assert all(f.data == b"y" * 8000 for f in pb.frames)
        await a.drain()  # not congested: returns at once
        a.close()
        b.close()

    run(main())


def test_hard_limit_raises_overflow() -> None:
    async def main() -> None:
        sa, sb = pair()
        sa.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        a = Peer().channel(sa, high_water=16 * 1024, hard_limit=100 * 1024)
        with pytest.raises(ChannelOverflow):
            for _ in range(1000):
                a.send(7, b"z" * 8000)
        assert a.pending_bytes <= 100 * 1024
        r, w = os.pipe()
        with pytest.raises(ChannelOverflow):
            a.send(7, b"z" * 8000, fd=w)
        assert fds_open(w) == [False]
        os.close(r)
        a.close()
        sb.close()

    run(main())


def test_peer_closed_with_pending_writes_and_waiters() -> None:
    async def main() -> None:
        sa, sb = pair()
        sa.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pa = Peer()
        a = pa.channel(sa, high_water=16 * 1024)
        await fill(a)
        drain = asyncio.ensure_future(a.drain())
        await asyncio.sleep(0)
        sb.close()
        await until(lambda: bool(pa.closes))
        assert len(pa.closes) == 1 and isinstance(pa.closes[0], OSError)
        assert a.closed
        with pytest.raises(ChannelClosed):
            await drain
        with pytest.raises(ChannelClosed):
            a.send(1, b"")
        await asyncio.sleep(0.01)
        assert len(pa.closes) == 1

    run(main())


def test_on_frame_exception_propagates_to_the_loop() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[BaseException | None] = []
        loop.set_exception_handler(lambda _l, ctx: seen.append(ctx.get("exception")))
        sa, sb = pair()
        pb = Peer()

        def boom(frame: Frame) -> None:
            pb.frames.append(frame)
            raise RuntimeError("handler bug")

        b = Channel(sb, name="b", on_frame=boom, on_close=pb.on_close)
        a = Peer().channel(sa)
        r, w = os.pipe()
        a.send(1, b"")
        a.send(2, b"", fd=w)  # delivered in the same batch? then closed, not leaked
        b.start()
        await until(lambda: bool(pb.closes))
        assert len(seen) == 1 and isinstance(seen[0], RuntimeError)
        assert isinstance(pb.closes[0], RuntimeError) and b.closed
        assert len(pb.frames) == 1
        os.set_blocking(r, False)
        a.close()
        assert os.read(r, 1) == b""  # no copy of the write end survives
        os.close(r)

    run(main())


def test_close_inside_on_frame_stops_delivery() -> None:
    async def main() -> None:
        sa, sb = pair()
        pb = Peer()
        b: Channel

        def once(frame: Frame) -> None:
            pb.frames.append(frame)
            b.close()

        b = Channel(sb, name="b", on_frame=once, on_close=pb.on_close)
        a = Peer().channel(sa)
        for i in range(3):
            a.send(i, b"")
        b.start()
        await until(lambda: bool(pb.frames))
        await asyncio.sleep(0.01)
        assert len(pb.frames) == 1 and pb.closes == [] and b.closed
        a.close()

    run(main())
