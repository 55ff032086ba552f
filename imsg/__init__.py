"""imsg: OpenSMTPD-style framed messages with fd passing over unix sockets.

Knows nothing about mail (DESIGN.md §2).  Layers, bottom up: frame (the
16-byte libimsg header), codec (msgpack bodies), reader (sans-IO
FrameReader/FrameWriter), channel (non-blocking socket on an asyncio loop).
"""

from imsg.channel import Channel, ChannelClosed, ChannelOverflow
from imsg.codec import pack, unpack
from imsg.frame import (
    FLAG_HASFD,
    HEADER_SIZE,
    MAX_FRAME,
    MAX_PAYLOAD,
    Frame,
    FrameError,
    encode,
    encode_header,
)
from imsg.reader import FrameReader, FrameWriter, close_fd

__all__ = [
    "FLAG_HASFD",
    "HEADER_SIZE",
    "MAX_FRAME",
    "MAX_PAYLOAD",
    "Channel",
    "ChannelClosed",
    "ChannelOverflow",
    "Frame",
    "FrameError",
    "FrameReader",
    "FrameWriter",
    "close_fd",
    "encode",
    "encode_header",
    "pack",
    "unpack",
]
