"""Fuzz the imsg frame reader: arbitrary bytes (and stray fds) raise only
FrameError and close every fd the reader took; valid frames cut anywhere
come out whole and in order (DESIGN.md §2, CVE-2025-62875's lesson)."""

from __future__ import annotations

import contextlib
import os

from fuzz_profiles import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from imsg.frame import FLAG_HASFD, HEADER, HEADER_SIZE, MAX_PAYLOAD, Frame, FrameError, encode
from imsg.reader import FrameReader
from smtpd.msg import Msg, MsgError, decode


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


headers = st.builds(
    lambda t, n, f, body: HEADER.pack(t, n, f, 0, 0) + body,
    st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1),
    st.sampled_from([0, FLAG_HASFD, 0xFFFF]), st.binary(max_size=64))


@fuzz_settings()
@given(st.lists(st.one_of(st.binary(max_size=40), headers), max_size=12),
       st.lists(st.booleans(), max_size=12))
def test_reader_raises_only_frame_error_and_leaks_no_fd(chunks: list[bytes],
                                                         with_fd: list[bool]) -> None:
    before = open_fds()
    reader = FrameReader()
    got: list[Frame] = []
    try:
        for i, chunk in enumerate(chunks):
            fds = [os.open(os.devnull, os.O_RDONLY)] if i < len(with_fd) and with_fd[i] else []
            got.extend(reader.feed(chunk, fds))
    except FrameError:
        pass
    finally:
        for frame in got:
            if frame.fd is not None:
                os.close(frame.fd)
        reader.close()
    assert open_fds() == before


frames = st.builds(Frame, st.integers(0, 2**32 - 1), st.binary(max_size=MAX_PAYLOAD // 8),
                   st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


@fuzz_settings()
@given(st.lists(frames, max_size=8), st.lists(st.integers(1, HEADER_SIZE * 4), min_size=1))
def test_frames_cut_anywhere_come_out_whole(sent: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode(f) for f in sent)
    reader = FrameReader()
    got: list[Frame] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got.extend(reader.feed(stream[pos:pos + step]))
        pos, i = pos + step, i + 1
    assert [(f.type, f.data, f.peerid, f.pid) for f in got] == \
        [(f.type, f.data, f.peerid, f.pid) for f in sent]
    assert reader.idle


@fuzz_settings()
@given(st.sampled_from(list(Msg)), st.binary(max_size=200))
def test_payload_decode_raises_only_msg_error(msg: Msg, data: bytes) -> None:
    with contextlib.suppress(MsgError):
        decode(msg, data)
