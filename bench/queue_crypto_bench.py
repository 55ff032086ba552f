"""Queue transforms (issue 8), two parts from one run:

1. in-memory throughput of gzip, AES-256-GCM streams and both, per
   direction, without any disk I/O, plus the one-off scrypt cost at start-up
   (for commits to disk see bench/queue_bench.py);
2. end-to-end messages/s through the real daemon (SMTP in, durable queue,
   Maildir out; bench/e2e_bench.py's machinery) with each queue mode:
   plain, `queue compression`, `queue encryption "KEY"` and both, and each
   mode's ratio to plain.  ``--rounds`` repeats the four daemons, alternating
   their order, so that load drifting on a shared machine hits every mode.

    .venv/bin/python bench/queue_crypto_bench.py [--mb 32] [--e2e-msgs 200]
        [--e2e-conc 1,10] [--e2e-size 4096] [--rounds 2] [--no-e2e]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

from smtpd.compress.gz import compress_chunks, decompress_chunks
from smtpd.crypto.kdf import KdfParams, derive_master_key
from smtpd.crypto.stream import FLAG_COMPRESSED, decrypt_chunks, encrypt_chunks

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/e2e_bench.py
from e2e_bench import HEADER, Cell, Daemon, count_new, run_cell

CHUNK = 64 * 1024
E2E_KEY = "0123456789abcdef0123456789abcdef"
MODES: dict[str, tuple[str, ...]] = {
    "plain": (),
    "gzip": ("compression",),
    "aes": (f'encryption "{E2E_KEY}"',),
    "gzip+aes": ("compression", f'encryption "{E2E_KEY}"'),
}


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


def end_to_end(msgs: int, concs: list[int], size: int, rounds: int) -> None:
    """One daemon per mode and round (fresh spool), `msgs` messages per
    concurrency; prints every cell, then each mode's mean rate and its
    ratio to plain."""
    user = pwd.getpwuid(os.getuid()).pw_name
    rates: dict[tuple[str, int], list[float]] = {}
    print(f"\nend to end: {msgs} messages of {size} B per cell, {rounds} round(s), "
          f"load {os.getloadavg()[0]:.1f}")
    print("mode      " + HEADER)
    for r in range(rounds):
        order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
        for mode in order:
            root = Path(tempfile.mkdtemp(prefix=f"qc-e2e-{mode}-"))
            d = Daemon(root, MODES[mode])
            try:
                maildir = d.mail / user
                for conc in concs:
                    cell: Cell = run_cell(d, f"{user}@localhost", partial(count_new, maildir),
                                          size, conc, msgs, budget=60.0)
                    print(f"{mode:9s} " + cell.row(), flush=True)
                    if cell.e2e_s > 0 and not cell.failed:
                        rates.setdefault((mode, conc), []).append(cell.sent / cell.e2e_s)
            finally:
                d.kill()
                shutil.rmtree(root, ignore_errors=True)
    print("\nmode      conc  e2e msg/s (mean)  vs plain")
    for conc in concs:
        base = statistics.mean(rates.get(("plain", conc), [0.0])) or float("nan")
        for mode in MODES:
            got = rates.get((mode, conc))
            if got:
                mean = statistics.mean(got)
                print(f"{mode:9s} {conc:>5} {mean:16.1f}  {mean / base:7.2f}x")
            else:
                print(f"{mode:9s} {conc:>5}   (timeout or failures)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=32)
    ap.add_argument("--e2e-msgs", type=int, default=200, help="messages per end-to-end cell")
    ap.add_argument("--e2e-conc", default="1,10", help="concurrent SMTP clients")
    ap.add_argument("--e2e-size", type=int, default=4096, help="message size in bytes")
    ap.add_argument("--rounds", type=int, default=2, help="daemons per mode, order alternating")
    ap.add_argument("--no-e2e", action="store_true", help="only the in-memory figures")
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
    if not args.no_e2e:
        end_to_end(args.e2e_msgs, [int(c) for c in args.e2e_conc.split(",")], args.e2e_size,
                   args.rounds)


if __name__ == "__main__":
    main()
