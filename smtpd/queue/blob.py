"""What a queue backend stores: opaque blobs named by (kind, numeric id).

Kept apart from backend.py so backends can import it without a cycle
through the registry.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

READ_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class SpoolFile:
    """A finished file given up by the caller (a message received in
    incoming/ and stored as is).  The fs backend's adopt_many keeps it where
    it is, in the directory it renames into the queue; put() and put_many()
    read it, as any source."""

    path: Path


# What ``put`` accepts: the whole blob, an iterable of chunks, a binary file
# object read to its end (messages are streamed, never loaded whole), or a
# SpoolFile.
BlobSource = bytes | Iterable[bytes] | BinaryIO | SpoolFile


class Kind(enum.StrEnum):
    """Blob namespaces; ids are msgids, evpids or 0 (KEYCHECK)."""

    MESSAGE = "message"  # id: msgid
    ENVELOPE = "envelope"  # id: evpid
    CORRUPT_MESSAGE = "corrupt-message"  # id: msgid
    CORRUPT_ENVELOPE = "corrupt-envelope"  # id: evpid
    CORRUPT_REASON = "corrupt-reason"  # id: msgid
    KEYCHECK = "keycheck"  # id: 0, the spool's encryption key-check file


class BlobNotFound(KeyError):
    """No blob of that kind and id."""

    def __init__(self, kind: Kind, oid: int) -> None:
        super().__init__(f"{kind} {oid:x}")
        self.kind = kind
        self.oid = oid

    def __str__(self) -> str:
        return f"no {self.kind} {self.oid:x}"


def iter_source(data: BlobSource) -> Iterator[bytes]:
    """Chunks of a put() source, without reading a file object whole."""
    if isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    elif isinstance(data, SpoolFile):
        with open(data.path, "rb") as spooled:
            while chunk := spooled.read(READ_CHUNK):
                yield chunk
    elif isinstance(data, io.IOBase) or hasattr(data, "read"):
        reader: BinaryIO = data  # type: ignore[assignment]
        while chunk := reader.read(READ_CHUNK):
            yield chunk
    else:
        for chunk in data:
            yield bytes(chunk)


class ChunkReader(io.RawIOBase):
    """A readable binary stream over an iterator of byte chunks.

    Exceptions raised by the iterator (e.g. a DecryptError found at chunk n)
    surface from ``read`` at that point.
    """

    def __init__(self, chunks: Iterable[bytes], on_close: BinaryIO | None = None) -> None:
        super().__init__()
        self._it = iter(chunks)
        self._pending = b""
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            nxt = next(self._it, None)
            if nxt is None:
                return 0
            self._pending = nxt
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close.close()
            self._on_close = None
        super().close()


def chunk_stream(chunks: Iterable[bytes], on_close: BinaryIO | None = None) -> BinaryIO:
    """``ChunkReader`` wrapped in a BufferedReader, typed as a BinaryIO."""
    return io.BufferedReader(ChunkReader(chunks, on_close), READ_CHUNK)
