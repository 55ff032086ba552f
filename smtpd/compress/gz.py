"""Streaming gzip (RFC 1952) so an administrator can ``gzip -dc`` a spool file.

zlib with ``wbits=31`` writes and reads the gzip wrapper. Decompression is
bounded: each step inflates at most ``OUT_CHUNK`` bytes, so a small hostile
file cannot make one call allocate gigabytes (a "zip bomb" is still only as
big as what the reader asks for, chunk by chunk).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

GZIP_MAGIC = b"\x1f\x8b"
OUT_CHUNK = 64 * 1024
_GZIP_WBITS = 31


class CompressError(ValueError):
    """Corrupt, truncated or trailing-garbage gzip data."""


def is_gzip(head: bytes) -> bool:
    return head[:2] == GZIP_MAGIC


class Compressor:
    """Feed plaintext with ``compress``; ``flush`` once at the end."""

    def __init__(self, level: int = 6) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class Decompressor:
    """Feed gzip data with ``feed`` (yields bounded plaintext); then ``finish``."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(_GZIP_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._z.eof:
            if data:
                raise CompressError("trailing data after the end of the gzip stream")
            return
        buf = data
        try:
            while True:
                out = self._z.decompress(buf, OUT_CHUNK)
                if out:
                    yield out
                buf = self._z.unconsumed_tail
                if self._z.eof:
                    if self._z.unused_data or buf:
                        raise CompressError("trailing data after the end of the gzip stream")
                    return
                # A full output chunk may leave inflated bytes pending inside
                # zlib even with no input left: keep draining until short.
                if not buf and len(out) < OUT_CHUNK:
                    return
        except zlib.error as exc:
            raise CompressError(f"corrupt gzip data: {exc}") from None

    def finish(self) -> None:
        if not self._z.eof:
            raise CompressError("truncated gzip data")


def compress_chunks(chunks: Iterable[bytes], level: int = 6) -> Iterator[bytes]:
    comp = Compressor(level)
    for chunk in chunks:
        out = comp.compress(chunk)
        if out:
            yield out
    yield comp.flush()


def decompress_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    dec = Decompressor()
    for chunk in chunks:
        yield from dec.feed(chunk)
    dec.finish()


def compress(data: bytes, level: int = 6) -> bytes:
    return b"".join(compress_chunks([data], level))


def decompress(data: bytes) -> bytes:
    return b"".join(decompress_chunks([data]))
