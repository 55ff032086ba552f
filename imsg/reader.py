"""Sans-IO frame reader and writer: bytes and fds in, frames out, and back.

Neither class touches a socket.  The reader is fed what recvmsg() returned
(data and SCM_RIGHTS fds); the writer hands out the next chunk to pass to
sendmsg() and is told how many bytes went out.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Sequence

from imsg.frame import (
    FLAG_HASFD,
    HEADER,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAX_FRAME,
    Frame,
    FrameError,
    encode_header,
)

# The writer coalesces small frames into chunks of about this size so that a
# burst of frames leaves in few sendmsg() calls.
COALESCE: int = 64 * 1024


def close_fd(fd: int) -> None:
    """Close an fd we own; EBADF etc. cannot be acted upon at this point."""
    with contextlib.suppress(OSError):
        os.close(fd)


class FrameReader:
    """Split a byte stream (plus the fds that came with it) into Frames.

    fds are queued in arrival order.  A frame flagged FLAG_HASFD takes the next
    queued fd once all of its bytes are in.  The sender attaches each fd to the
    sendmsg() carrying its frame's first byte, so after a feed at most one fd
    may wait, and only for a flagged frame still incomplete in the buffer;
    anything else is a FrameError.  After an error every fd the reader held is
    closed and the reader refuses further input.
    """

    __slots__ = ("_broken", "_buf", "_fds")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: deque[int] = deque()
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for more input."""
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """True when no partial frame and no fd is held (a clean EOF point)."""
        return not self._buf and not self._fds

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> list[Frame]:
        """Consume ``data`` and ``fds`` (the reader now owns the fds) and
        return every frame completed by them, in order."""
        if self._broken:
            for fd in fds:
                close_fd(fd)
            raise FrameError("reader already failed")
        self._fds.extend(fds)
        frames: list[Frame] = []
        try:
            self._parse(data, frames)
        except FrameError:
            self._broken = True
            for frame in frames:
                if frame.fd is not None:
                    close_fd(frame.fd)
            self.close()
            raise
        return frames

    def _parse(self, data: bytes, frames: list[Frame]) -> None:
        # Parse straight from ``data`` when nothing is buffered (the common
        # case), otherwise append to the buffer; either way keep only the tail.
        if self._buf:
            self._buf += data
            src: bytes | bytearray = self._buf
        else:
            src = data
        end = len(src)
        pos = 0
        flags = 0
        with memoryview(src) as view:
            while end - pos >= HEADER_SIZE:
                type_, length, flags, peerid, pid = HEADER.unpack_from(src, pos)
                if length < HEADER_SIZE or length > MAX_FRAME:
                    raise FrameError(f"frame type {type_}: bad length {length}")
                if flags & ~KNOWN_FLAGS:
                    raise FrameError(f"frame type {type_}: unknown flags {flags:#x}")
                if end - pos < length:
                    break
                fd: int | None = None
                if flags & FLAG_HASFD:
                    if not self._fds:
                        raise FrameError(f"frame type {type_}: flagged with an fd but none came")
                    fd = self._fds.popleft()
                body = bytes(view[pos + HEADER_SIZE : pos + length])
                frames.append(Frame(type_, body, peerid, pid, fd))
                pos += length
                flags = 0
            rest = end - pos
            if rest and src is not self._buf:
                self._buf = bytearray(view[pos:])
        if src is self._buf and pos:
            del self._buf[:pos]
        self._check_fds(rest, flags)

    def _check_fds(self, rest: int, flags: int) -> None:
        if not self._fds:
            return
        # An fd may only wait for the one incomplete frame in the buffer, and
        # only if that frame is (or, header not yet complete, may be) flagged.
        if len(self._fds) > 1 or rest == 0:
            raise FrameError(f"{len(self._fds)} fd(s) received without a flagged frame")
        if rest >= HEADER_SIZE and not flags & FLAG_HASFD:
            raise FrameError("fd received with a frame not flagged to carry one")

    def close(self) -> None:
        """Close queued fds and drop buffered bytes."""
        while self._fds:
            close_fd(self._fds.popleft())
        self._buf = bytearray()


class FrameWriter:
    """Queue of encoded frames waiting for sendmsg().

    Ownership: ``queue(frame)`` takes ownership of ``frame.fd`` in all cases
    (also when it raises); the writer closes it once the sendmsg() carrying it
    succeeded, or on close().  The caller must not close or reuse it.

    Usage::

        chunk, fd = writer.next_chunk()      # send chunk; attach fd if not None
        writer.advance(sock.sendmsg([chunk], ancdata_for(fd)))
    """

    __slots__ = ("_chunks", "_exported", "_offset", "_pending")

    def __init__(self) -> None:
        # Each chunk is [bytes, fd or None]; a chunk with an fd starts with the
        # first byte of the frame that carries it, so it must never be merged
        # into the chunk before it.
        self._chunks: deque[tuple[bytearray, int | None]] = deque()
        self._offset = 0  # bytes of the head chunk already sent
        self._exported = False  # head chunk handed out: never mutate it again
        self._pending = 0

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def queue(self, frame: Frame) -> None:
        """Append ``frame``; FrameError if it cannot be encoded (oversize)."""
        try:
            header = encode_header(frame)
        except FrameError:
            if frame.fd is not None:
                close_fd(frame.fd)
            raise
        chunks = self._chunks
        if (
            frame.fd is None
            and chunks
            and len(chunks[-1][0]) < COALESCE
            and not (self._exported and len(chunks) == 1)
        ):
            buf = chunks[-1][0]
        else:
            buf = bytearray()
            chunks.append((buf, frame.fd))
        buf += header
        buf += frame.data
        self._pending += len(header) + len(frame.data)

    def next_chunk(self) -> tuple[memoryview, int | None]:
        """The bytes to send next and the fd to attach to that send (or None).

        An fd is returned only while none of its chunk has been sent, so the
        fd rides on the sendmsg() that starts exactly at its frame.  The chunk
        stops before the next flagged frame.  Empty view when nothing pends."""
        if not self._chunks:
            return memoryview(b""), None
        buf, fd = self._chunks[0]
        self._exported = True
        return memoryview(buf)[self._offset :], fd

    def advance(self, nbytes: int) -> None:
        """Record that the last next_chunk() sent ``nbytes`` (> 0 means any
        attached fd went with them: it is closed here)."""
        if nbytes <= 0:
            return
        buf, fd = self._chunks[0]
        if nbytes > len(buf) - self._offset:
            raise ValueError("advance() past the end of the chunk")
        if fd is not None:
            close_fd(fd)
            self._chunks[0] = (buf, None)
        self._offset += nbytes
        self._pending -= nbytes
        if self._offset == len(buf):
            self._chunks.popleft()
            self._offset = 0
            self._exported = False

    def close(self) -> None:
        """Drop everything unsent and close the fds that were never sent."""
        while self._chunks:
            _buf, fd = self._chunks.popleft()
            if fd is not None:
                close_fd(fd)
        self._offset = 0
        self._pending = 0
        self._exported = False
