"""A non-blocking imsg channel: one AF_UNIX SOCK_STREAM socket on an asyncio loop.

The socket I/O is here; framing and fd bookkeeping are the sans-IO
FrameReader/FrameWriter.  Callbacks:

- ``on_frame(frame)`` for every frame received, in order.  The receiver owns
  ``frame.fd``.  An exception raised by on_frame is not swallowed: the channel
  closes (fds of frames not yet delivered are closed), ``on_close(channel,
  exc)`` is scheduled, and the exception propagates out of the reader
  callback to the loop's exception handler, where the process decides.
- ``on_close(channel, exc)`` exactly once when the channel dies by itself:
  ``exc`` is None for a clean EOF from the peer, the OSError for a reset or
  broken pipe, a FrameError for a protocol violation (including EOF in the
  middle of a frame).  It is always called from the loop (call_soon), never
  from inside send().  A local close() does not call it.
- ``on_trace("in" | "out", frame)`` for each frame received or sent (tracing).
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
from collections.abc import Callable
from typing import Final

from imsg.codec import pack
from imsg.frame import Frame, FrameError
from imsg.reader import FrameReader, FrameWriter, close_fd

RECV_SIZE: Final = 256 * 1024
# Linux hands over the fds of one sendmsg() per recvmsg(); leave room for a
# few in case another kernel batches, and treat MSG_CTRUNC as fatal.
MAX_FDS_PER_RECV: Final = 8
_FD_SIZE: Final = array.array("i").itemsize
_CMSG_SPACE: Final = socket.CMSG_SPACE(MAX_FDS_PER_RECV * _FD_SIZE)
# Received fds must not leak into the processes we fork+exec.
_RECV_FLAGS: Final = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
# Python ignores SIGPIPE, but say it anyway: a dead peer is an EPIPE, not a signal.
_SEND_FLAGS: Final = getattr(socket, "MSG_NOSIGNAL", 0)


class ChannelOverflow(Exception):
    """The write queue would exceed hard_limit: the producer ignored backpressure."""


class ChannelClosed(Exception):
    """The channel is closed: nothing can be sent or drained any more."""


FrameCallback = Callable[[Frame], None]
CloseCallback = Callable[["Channel", Exception | None], None]
TraceCallback = Callable[[str, Frame], None]


class Channel:
    """See the module docstring.  Counters: ``frames_in`` (delivered),
    ``frames_out`` (accepted by send), ``bytes_in`` / ``bytes_out`` (socket I/O)."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        name: str,
        on_frame: FrameCallback,
        on_close: CloseCallback,
        high_water: int = 256 * 1024,
        hard_limit: int = 64 * 1024 * 1024,
        on_trace: TraceCallback | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not 0 < high_water < hard_limit:
            raise ValueError("need 0 < high_water < hard_limit")
        sock.setblocking(False)
        self.sock = sock
        self.name = name
        self.on_frame = on_frame
        self.on_close = on_close
        self.on_trace = on_trace
        self.on_congested: Callable[[], None] | None = None
        self.on_drained: Callable[[], None] | None = None
        self.high_water = high_water
        self.hard_limit = hard_limit
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._loop = loop
        self._fileno = sock.fileno()
        self._reader = FrameReader()
        self._writer = FrameWriter()
        self._reading = False
        self._writing = False
        self._closed = False
        self._congested = False
        # (threshold, future): resolved when pending bytes <= threshold.
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"<Channel {self.name} fd={self._fileno} pending={self.pending_bytes}>"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_bytes(self) -> int:
        return self._writer.pending_bytes

    @property
    def congested(self) -> bool:
        """True from when pending bytes exceed high_water until they fall to
        high_water // 2 (hysteresis, so producers do not flap)."""
        return self._congested

    # -- reading -----------------------------------------------------------

    def start(self) -> None:
        """Start reading.  Nothing is read before this (the READY handshake
        relies on it, DESIGN.md §1); sending works before start()."""
        if self._closed:
            raise ChannelClosed(self.name)
        if not self._reading:
            self.loop.add_reader(self._fileno, self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        try:
            data, ancdata, msg_flags, _addr = self.sock.recvmsg(
                RECV_SIZE, _CMSG_SPACE, _RECV_FLAGS
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        fds = _fds_from(ancdata)
        if msg_flags & socket.MSG_CTRUNC:
            for fd in fds:
                close_fd(fd)
            self._fail(FrameError(f"{self.name}: control message truncated (too many fds)"))
            return
        if not data:
            for fd in fds:
                close_fd(fd)
            idle = self._reader.idle
            self._fail(None if idle else FrameError(f"{self.name}: EOF in the middle of a frame"))
            return
        self.bytes_in += len(data)
        try:
            frames = self._reader.feed(data, fds)
        except FrameError as exc:
            self._fail(exc)
            return
        for i, frame in enumerate(frames):
            if self._closed:  # on_frame closed us: nobody will take these fds
                _close_fds(frames[i:])
                return
            self.frames_in += 1
            if self.on_trace is not None:
                self.on_trace("in", frame)
            try:
                self.on_frame(frame)
            except Exception as exc:
                _close_fds(frames[i + 1 :])
                self._fail(exc)
                raise

    # -- writing -----------------------------------------------------------

    def send(self, type: int, data: bytes, *, fd: int | None = None, peerid: int = 0) -> None:
        """Queue one frame and write what the socket takes now.

        ``fd`` is handed over: the channel closes it once sent, or when this
        raises (FrameError if oversize, ChannelOverflow, ChannelClosed)."""
        frame = Frame(type, data, peerid, os.getpid(), fd)
        if self._closed:
            if fd is not None:
                close_fd(fd)
            raise ChannelClosed(self.name)
        if self._writer.pending_bytes + frame.size > self.hard_limit:
            if fd is not None:
                close_fd(fd)
            raise ChannelOverflow(
                f"{self.name}: {self._writer.pending_bytes} bytes pending, hard limit "
                f"{self.hard_limit}: the producer ignores backpressure"
            )
        self._writer.queue(frame)
        self.frames_out += 1
        if self.on_trace is not None:
            self.on_trace("out", frame)
        if not self._writing:
            self._flush()
            if self._closed:
                return
            if self._writer.pending_bytes:
                self.loop.add_writer(self._fileno, self._on_writable)
                self._writing = True
        if not self._congested and self._writer.pending_bytes > self.high_water:
            self._congested = True
            if self.on_congested is not None:
                self.on_congested()

    def compose(self, type: int, obj: object, *, fd: int | None = None, peerid: int = 0) -> None:
        """send() with a msgpack body."""
        try:
            data = pack(obj)
        except BaseException:
            if fd is not None:
                close_fd(fd)
            raise
        self.send(type, data, fd=fd, peerid=peerid)

    def _flush(self) -> None:
        writer = self._writer
        while True:
            chunk, fd = writer.next_chunk()
            if not chunk:
                return
            anc = []
            if fd is not None:
                anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd])))
            try:
                sent = self.sock.sendmsg([chunk], anc, _SEND_FLAGS)
            except InterruptedError:
                continue
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(exc)
                return
            writer.advance(sent)
            self.bytes_out += sent
            if sent < len(chunk):
                return

    def _on_writable(self) -> None:
        self._flush()
        if self._closed:
            return
        pending = self._writer.pending_bytes
        if not pending:
            self.loop.remove_writer(self._fileno)
            self._writing = False
        if self._congested and pending <= self.high_water // 2:
            self._congested = False
            if self.on_drained is not None:
                self.on_drained()
        self._wake(pending)

    def _wake(self, pending: int) -> None:
        if not self._waiters:
            return
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for threshold, fut in self._waiters:
            if pending <= threshold:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((threshold, fut))
        self._waiters = keep

    async def _wait_until(self, threshold: int) -> None:
        if self._closed:
            raise ChannelClosed(self.name)
        if self._writer.pending_bytes <= threshold:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append((threshold, fut))
        await fut

    async def drain(self) -> None:
        """Return when not congested (pending <= high_water // 2)."""
        if self._congested:
            await self._wait_until(self.high_water // 2)
        elif self._closed:
            raise ChannelClosed(self.name)

    async def flush(self) -> None:
        """Return when every queued byte has been written (e.g. before close())."""
        await self._wait_until(0)

    # -- closing -----------------------------------------------------------

    def close(self) -> None:
        """Close now: unsent data is dropped, fds not yet sent or delivered are
        closed, drain()/flush() waiters get ChannelClosed.  Idempotent; does
        not call on_close."""
        if self._closed:
            return
        self._closed = True
        if self._reading:
            self.loop.remove_reader(self._fileno)
            self._reading = False
        if self._writing:
            self.loop.remove_writer(self._fileno)
            self._writing = False
        self._reader.close()
        self._writer.close()
        self.sock.close()
        waiters, self._waiters = self._waiters, []
        for _threshold, fut in waiters:
            if not fut.done():
                fut.set_exception(ChannelClosed(self.name))

    def _fail(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self.close()
        self.loop.call_soon(self.on_close, self, exc)


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % _FD_SIZE]))
    return fds


def _close_fds(frames: list[Frame]) -> None:
    for frame in frames:
        if frame.fd is not None:
            close_fd(frame.fd)
