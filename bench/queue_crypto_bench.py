"""In-memory throughput of the queue transforms (issue 8): gzip, AES-256-GCM
streams and both, per direction, without any disk I/O; plus the one-off
scrypt cost at start-up. For commits to disk see bench/queue_bench.py.

    .venv/bin/python bench/queue_crypto_bench.py [--mb 32]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterable, Iterator

from smtpd.compress.gz import compress_chunks, decompress_chunks
from smtpd.crypto.kdf import KdfParams, derive_master_key
from smtpd.crypto.stream import FLAG_COMPRESSED, decrypt_chunks, encrypt_chunks

CHUNK = 64 * 1024


def text_like(mb: int) -> bytes:
    # Half base64-ish random (attachments), half repetitive text: mail-like.
    rnd = os.urandom(mb * 1024 * 1024 // 2).hex().encode()[: mb * 1024 * 1024 // 2]
    text = b"Dear team, please find the quarterly figures below. " * (mb * 1024 * 1024 // 104)
    return rnd + text


def chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i : i + CHUNK]


def timed(fn: Callable[[], Iterable[bytes]]) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    out = b"".join(fn())
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=32)
    args = ap.parse_args()
    data = text_like(args.mb)
    mb = len(data) / 1e6
    t0 = time.perf_counter()
    key = derive_master_key("correct horse battery staple", KdfParams.new())
    print(f"scrypt (n=2^15, r=8, p=1) key derivation: {1000 * (time.perf_counter() - t0):.0f} ms,"
          " once per process")
    keys = {key.key_id: key}
    label = b"message 51e7b466"

    t_gz, gz = timed(lambda: compress_chunks(chunks(data)))
    t_ungz, _ = timed(lambda: decompress_chunks(chunks(gz)))
    t_enc, enc = timed(lambda: encrypt_chunks(key, label, chunks(data)))
    t_dec, _ = timed(lambda: decrypt_chunks(keys, label, chunks(enc)))
    t_both, both = timed(lambda: encrypt_chunks(key, label, compress_chunks(chunks(data)),
                                                FLAG_COMPRESSED))
    t_unboth, _ = timed(lambda: decompress_chunks(decrypt_chunks(keys, label, chunks(both))))
    print(f"payload {mb:.1f} MB, gzip keeps {len(gz) / len(data):.1%}, "
          f"encryption adds {len(enc) - len(data)} bytes")
    for name, w, r in (("gzip", t_gz, t_ungz), ("aes-256-gcm", t_enc, t_dec),
                       ("gzip+aes", t_both, t_unboth)):
        print(f"{name:12s} write {mb / w:8.1f} MB/s   read {mb / r:8.1f} MB/s")


if __name__ == "__main__":
    main()
