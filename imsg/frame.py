"""The imsg frame: libimsg's 16-byte header followed by the body.

Layout (host byte order, little endian on every platform we run on)::

     0      4      6       8       12     16
     | type | len  | flags | peerid | pid  | body (len - 16 bytes) |

``len`` counts the header, so a frame is 16..MAX_FRAME bytes.  A frame that
carries a file descriptor has FLAG_HASFD set; the descriptor itself travels as
SCM_RIGHTS ancillary data on the sendmsg() that carries the frame's first byte
(libimsg's IMSGF_HASFD contract).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

HEADER: Final = struct.Struct("<IHHII")
HEADER_SIZE: Final = HEADER.size
MAX_FRAME: Final = 16384
MAX_PAYLOAD: Final = MAX_FRAME - HEADER_SIZE
FLAG_HASFD: Final = 1
# Flags we understand; any other bit set by a peer is a protocol violation (fail closed).
KNOWN_FLAGS: Final = FLAG_HASFD

assert HEADER_SIZE == 16


class FrameError(Exception):
    """A protocol violation: malformed header, bad length, missing or stray fd."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One imsg.  ``fd`` is owned by whoever holds the frame: the receiver must
    close it, a sender hands it over to the writer (which closes it once sent)."""

    type: int
    data: bytes
    peerid: int = 0
    pid: int = 0
    fd: int | None = None

    @property
    def size(self) -> int:
        """Encoded size in bytes, header included."""
        return HEADER_SIZE + len(self.data)


def encode_header(frame: Frame) -> bytes:
    """The 16 header bytes of ``frame``; FrameError if it cannot be encoded.

    Oversize is an error at the sender, never a truncation (DESIGN.md §2)."""
    size = HEADER_SIZE + len(frame.data)
    if size > MAX_FRAME:
        raise FrameError(f"frame type {frame.type}: {size} bytes exceeds {MAX_FRAME}")
    flags = FLAG_HASFD if frame.fd is not None else 0
    try:
        return HEADER.pack(frame.type, size, flags, frame.peerid, frame.pid)
    except struct.error as exc:
        raise FrameError(f"frame type {frame.type}: header field out of range") from exc


def encode(frame: Frame) -> bytes:
    """Header and body as one bytes object (the fd, if any, travels separately)."""
    return encode_header(frame) + frame.data
