"""msgpack bodies for imsg frames.

Binary and text stay distinct (use_bin_type / raw=False) so a ``bytes`` value
round-trips as bytes and a ``str`` as str.  Map keys may be any hashable value
(strict_map_key=False) because payloads key by ints as well as strings.
"""

from __future__ import annotations

from typing import Any

import msgpack

from imsg.frame import FrameError


def pack(obj: object) -> bytes:
    """Serialize ``obj``; a TypeError for an unserializable value is a caller bug."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    """Deserialize one body.  Anything malformed (truncated, trailing bytes,
    bad UTF-8, unhashable map key) is a FrameError, the protocol's own error."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FrameError(f"malformed msgpack body: {exc}") from exc
