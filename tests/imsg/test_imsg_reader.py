"""Sans-IO FrameReader / FrameWriter and the frame header."""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsg import (
    FLAG_HASFD,
    HEADER_SIZE,
    MAX_FRAME,
    MAX_PAYLOAD,
    Frame,
    FrameError,
    FrameReader,
    FrameWriter,
    encode,
    pack,
    unpack,
)
from imsg.frame import HEADER

FRAMES = [
    Frame(1, b"", 0, 10),
    Frame(2, b"hello", 7, 11),
    Frame(0xFFFFFFFF, bytes(range(256)) * 3, 0xFFFFFFFF, 0xFFFFFFFF),
    Frame(3, b"x" * MAX_PAYLOAD, 1, 2),
]
STREAM = b"".join(encode(f) for f in FRAMES)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        if is_open(fd):
            os.close(fd)


def test_header_layout_is_libimsg() -> None:
    raw = encode(Frame(0x01020304, b"ab", 0x0A0B0C0D, 0x11223344, fd=5))
    assert len(raw) == HEADER_SIZE + 2
    header = struct.pack("<IHHII", 0x01020304, 18, FLAG_HASFD, 0x0A0B0C0D, 0x11223344)
    assert raw[:HEADER_SIZE] == header
    assert raw[HEADER_SIZE:] == b"ab"


def test_oversize_is_an_error_at_the_sender() -> None:
    with pytest.raises(FrameError):
        encode(Frame(1, b"x" * (MAX_PAYLOAD + 1)))
    assert len(encode(Frame(1, b"x" * MAX_PAYLOAD))) == MAX_FRAME


def test_header_field_out_of_range() -> None:
    with pytest.raises(FrameError):
        encode(Frame(1 << 32, b""))
    with pytest.raises(FrameError):
        encode(Frame(1, b"", peerid=-1))


def test_whole_stream() -> None:
    reader = FrameReader()
    assert reader.feed(STREAM) == FRAMES
    assert reader.idle


def test_byte_by_byte() -> None:
    reader = FrameReader()
    out: list[Frame] = []
    for i in range(len(STREAM)):
        out += reader.feed(STREAM[i : i + 1])
    assert out == FRAMES
    assert reader.idle


def test_trailing_partial_frame_is_kept() -> None:
    reader = FrameReader()
    extra = encode(Frame(9, b"tail"))
    assert reader.feed(STREAM + extra[:7]) == FRAMES
    assert reader.buffered == 7 and not reader.idle
    assert reader.feed(extra[7:]) == [Frame(9, b"tail")]
    assert reader.idle


def test_across_several_feeds() -> None:
    reader = FrameReader()
    cuts = [0, 3, 16, 17, 40, 900, len(STREAM) - 1, len(STREAM)]
    out: list[Frame] = []
    for a, b in itertools.pairwise(cuts):
        out += reader.feed(STREAM[a:b])
    assert out == FRAMES


@pytest.mark.parametrize("length", [0, 15, MAX_FRAME + 1, 0xFFFF])
def test_bad_length(length: int) -> None:
    with pytest.raises(FrameError):
        FrameReader().feed(HEADER.pack(1, length, 0, 0, 0) + b"\0" * 32)


def test_unknown_flags() -> None:
    with pytest.raises(FrameError):
        FrameReader().feed(HEADER.pack(1, 16, 2, 0, 0))


def test_flagged_frame_takes_queued_fd(pipe: tuple[int, int]) -> None:
    _r, w = pipe
    raw = encode(Frame(5, b"body", fd=w))
    reader = FrameReader()
    # The fd arrives with the frame's first byte, the frame completes later.
    assert reader.feed(raw[:3], [w]) == []
    assert reader.feed(raw[3:10]) == []
    assert reader.feed(raw[10:]) == [Frame(5, b"body", fd=w)]
    assert reader.idle


def test_flagged_frame_without_fd(pipe: tuple[int, int]) -> None:
    with pytest.raises(FrameError, match="none came"):
        FrameReader().feed(encode(Frame(5, b"", fd=99)))


def test_fd_without_flagged_frame_is_closed(pipe: tuple[int, int]) -> None:
    _r, w = pipe
    with pytest.raises(FrameError):
        FrameReader().feed(encode(Frame(5, b"")), [w])
    assert not is_open(w)


def test_fd_with_unflagged_partial_frame(pipe: tuple[int, int]) -> None:
    _r, w = pipe
    raw = encode(Frame(5, b"abcdef"))
    with pytest.raises(FrameError, match="not flagged"):
        FrameReader().feed(raw[:18], [w])
    assert not is_open(w)


def test_two_fds_for_one_partial_frame(pipe: tuple[int, int]) -> None:
    r, w = pipe
    raw = encode(Frame(5, b"abcdef", fd=1))
    with pytest.raises(FrameError):
        FrameReader().feed(raw[:18], [r, w])
    assert not is_open(r) and not is_open(w)


def test_error_closes_fds_of_frames_already_parsed(pipe: tuple[int, int]) -> None:
    r, w = pipe
    raw = encode(Frame(5, b"a", fd=1)) + HEADER.pack(1, 3, 0, 0, 0)
    reader = FrameReader()
    with pytest.raises(FrameError):
        reader.feed(raw, [w])
    assert not is_open(w)
    # A failed reader refuses anything more, and closes what it is given.
    with pytest.raises(FrameError):
        reader.feed(b"", [r])
    assert not is_open(r)


def test_writer_coalesces_and_splits_before_flagged_frames(pipe: tuple[int, int]) -> None:
    _r, w = pipe
    writer = FrameWriter()
    a, b, c = Frame(1, b"a"), Frame(2, b"bb", fd=w), Frame(3, b"ccc")
    for f in (a, b, c):
        writer.queue(f)
    assert writer.pending_bytes == 3 * HEADER_SIZE + 6
    chunk, fd = writer.next_chunk()
    assert bytes(chunk) == encode(a) and fd is None
    writer.advance(len(chunk))
    chunk, fd = writer.next_chunk()
    assert bytes(chunk) == encode(b) + encode(c) and fd == w
    writer.advance(5)  # a partial send still carried the fd: it is closed now
    assert not is_open(w)
    chunk, fd = writer.next_chunk()
    assert bytes(chunk) == (encode(b) + encode(c))[5:] and fd is None
    writer.advance(len(chunk))
    assert writer.pending_bytes == 0
    assert len(writer.next_chunk()[0]) == 0


def test_writer_never_mutates_a_chunk_it_handed_out() -> None:
    writer = FrameWriter()
    writer.queue(Frame(1, b"a"))
    chunk, _ = writer.next_chunk()
    writer.queue(Frame(2, b"b"))  # must not resize the exported buffer
    assert bytes(chunk) == encode(Frame(1, b"a"))
    writer.advance(len(chunk))
    assert bytes(writer.next_chunk()[0]) == encode(Frame(2, b"b"))


def test_writer_oversize_closes_fd_and_queues_nothing(pipe: tuple[int, int]) -> None:
    _r, w = pipe
    writer = FrameWriter()
    with pytest.raises(FrameError):
        writer.queue(Frame(1, b"x" * (MAX_PAYLOAD + 1), fd=w))
    assert not is_open(w) and writer.pending_bytes == 0


def test_writer_close_closes_unsent_fds(pipe: tuple[int, int]) -> None:
    _r, w = pipe
    writer = FrameWriter()
    writer.queue(Frame(1, b"x", fd=w))
    writer.close()
    assert not is_open(w) and writer.pending_bytes == 0


def test_codec_roundtrip_and_errors() -> None:
    obj = {"s": "é", "b": b"\0\xff", 1: [1, 2.5, None, True], "n": -(2**63)}
    assert unpack(pack(obj)) == obj
    for bad in (b"\xc1", pack(1) + b"\0", b"\x92\x01", b"\xa2\xff\xfe", b"\x81\x91\x01\x01"):
        with pytest.raises(FrameError):
            unpack(bad)


frame_st = st.builds(
    lambda t, d, p, q, f: (Frame(t, d, p, q), f),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=3000),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(
    frames=st.lists(frame_st, min_size=1, max_size=12),
    send_sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
    recv_sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
)
def test_roundtrip_random_chunking(
    frames: list[tuple[Frame, bool]], send_sizes: list[int], recv_sizes: list[int]
) -> None:
    """Writer -> simulated stream socket -> reader, with short sends and
    arbitrary recv boundaries.  Like the kernel, an fd is dup'ed on send and
    delivered with the recv that holds the first byte of its sendmsg."""
    pipes: list[tuple[int, int]] = []
    writer = FrameWriter()
    expected: list[Frame] = []
    for frame, with_fd in frames:
        fd = None
        if with_fd:
            pipes.append(os.pipe())
            fd = pipes[-1][1]
        writer.queue(Frame(frame.type, frame.data, frame.peerid, frame.pid, fd))
        expected.append(frame)
    # "Kernel": a byte stream plus fds keyed by the stream offset they start at.
    stream = bytearray()
    fd_at: dict[int, int] = {}
    i = 0
    while writer.pending_bytes:
        chunk, fd = writer.next_chunk()
        n = min(len(chunk), send_sizes[i % len(send_sizes)])
        i += 1
        if fd is not None:
            fd_at[len(stream)] = os.dup(fd)
        stream += chunk[:n]
        writer.advance(n)
    reader = FrameReader()
    got: list[Frame] = []
    pos = 0
    i = 0
    while pos < len(stream):
        end = min(len(stream), pos + recv_sizes[i % len(recv_sizes)])
        i += 1
        fds = [fd_at.pop(k) for k in sorted(fd_at) if pos <= k < end]
        got += reader.feed(bytes(stream[pos:end]), fds)
        pos = end
    assert reader.idle
    assert [Frame(f.type, f.data, f.peerid, f.pid) for f in got] == expected
    received = [f.fd for f in got if f.fd is not None]
    try:
        assert len(received) == len(pipes)
        for (r, _w), fd in zip(pipes, received, strict=True):
            os.write(fd, b"!")
            assert os.read(r, 1) == b"!"
    finally:
        for fd in received:
            os.close(fd)
    for r, _w in pipes:
        # EOF, not EAGAIN: the writer closed its copy of every fd it sent.
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""
        os.close(r)
