from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import zlib

import pytest

from smtpd.compress.gz import (
    OUT_CHUNK,
    CompressError,
    Decompressor,
    compress,
    compress_chunks,
    decompress,
    decompress_chunks,
    is_gzip,
)

SIZES = [0, 1, OUT_CHUNK - 1, OUT_CHUNK, OUT_CHUNK + 1, 300_000]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_random_and_text(size: int) -> None:
    for data in (os.urandom(size), (b"Subject: hello\r\n" * (size // 16 + 1))[:size]):
        packed = compress(data)
        assert is_gzip(packed)
        assert decompress(packed) == data
        pieces = [packed[i : i + 1000] for i in range(0, len(packed), 1000)]
        assert b"".join(decompress_chunks(pieces)) == data


def test_streamed_output_is_bounded() -> None:
    # 20 MB of zeros compress to ~20 kB; each step must stay bounded.
    packed = b"".join(compress_chunks(b"\0" * 1_000_000 for _ in range(20)))
    assert len(packed) < 100_000
    dec = Decompressor()
    total = 0
    for out in dec.feed(packed):
        assert len(out) <= OUT_CHUNK
        total += len(out)
    dec.finish()
    assert total == 20_000_000


def test_python_gzip_module_reads_it() -> None:
    import gzip

    data = b"x" * 5000 + os.urandom(100)
    assert gzip.decompress(compress(data)) == data


@pytest.mark.skipif(shutil.which("gzip") is None, reason="no gzip binary")
def test_gzip_binary_reads_it() -> None:
    data = b"version: 1\nrcpt: a@b\n" * 100
    out = subprocess.run(["gzip", "-dc"], input=compress(data), capture_output=True,
                         check=True, timeout=20)
    assert out.stdout == data


def test_truncated_corrupt_and_trailing() -> None:
    packed = compress(os.urandom(5000))
    with pytest.raises(CompressError, match="truncated"):
        decompress(packed[:-10])
    with pytest.raises(CompressError, match="trailing"):
        decompress(packed + b"junk")
    with pytest.raises(CompressError, match="trailing"):
        b"".join(decompress_chunks([packed, b"junk"]))
    bad = bytearray(packed)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(CompressError):
        decompress(bytes(bad))  # gzip's CRC-32 catches what inflate does not
    with pytest.raises(CompressError):
        decompress(b"not gzip at all")
    raw_deflate = zlib.compress(b"hello")
    with pytest.raises(CompressError):
        decompress(raw_deflate)


def test_fuzz_never_raises_anything_else() -> None:
    rng = random.Random(7)
    packed = compress(b"hello world " * 1000)
    for _ in range(300):
        bad = bytearray(packed)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        with contextlib.suppress(CompressError):
            decompress(bytes(bad[: rng.randint(0, len(bad))]))
