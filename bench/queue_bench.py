"""Queue figures: envelope and message sizes saved by gzip, and commit/read
throughput with compression and encryption on and off (issue 8).

    .venv/bin/python bench/queue_bench.py [--mb 20] [--spool DIR]

Prints one line per measurement. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import random
import tempfile
import time
from pathlib import Path

from smtpd.compress.gz import compress
from smtpd.crypto.kdf import SCRYPT_N
from smtpd.queue.backend import Kind
from smtpd.queue.envelope import DeliveryType, DsnNotify, Envelope, EnvelopeFlag, dump_envelope
from smtpd.queue.front import QueueFront
from smtpd.queue.fs import FsBackend

MODES = [("plain", False, None), ("gzip", True, None), ("aes", False, "key"),
         ("gzip+aes", True, "key")]


def sample_envelopes(n: int, rng: random.Random) -> list[Envelope]:
    out = []
    for i in range(n):
        user = f"user{rng.randrange(10_000)}"
        out.append(Envelope(
            evpid=(rng.randrange(1, 2**32) << 32) | rng.randrange(1, 2**32),
            type=rng.choice([DeliveryType.MDA, DeliveryType.MTA]),
            dispatcher=rng.choice(["local_mail", "outbound", "relay_smarthost"]),
            sender=f"sender{i}@example.org", rcpt=f"{user}@example.net", dest=f"{user}@example.net",
            ctime=1_700_000_000 + i, ttl=345600, tag="", smtpname="mx1.example.net",
            helo="mail.example.org", hostname="mail.example.org", sockaddr="192.0.2.10",
            flags=EnvelopeFlag.AUTHENTICATED if i % 3 == 0 else EnvelopeFlag(0),
            dsn_notify=DsnNotify.FAILURE, mda_user=user if i % 2 else "",
            retry=i % 4, lasttry=1_700_000_500 if i % 4 else 0,
            errorline="421 4.7.0 mx.example.net Try again later" if i % 4 else "",
        ))
    return out


def sample_message(rng: random.Random, size: int) -> bytes:
    words = ["the", "queue", "message", "delivery", "relay", "server", "mail", "envelope",
             "sender", "recipient", "meeting", "report", "attached", "please", "find", "below",
             "regards", "thanks"]
    head = (
        b"Received: from mail.example.org (mail.example.org [192.0.2.10])\n"
        b"\tby mx1.example.net (pysmtpd) with ESMTPS id 51e7b466\n"
        b"\tfor <bob@example.net>; Fri, 27 Nov 2026 10:08:18 +0000 (UTC)\n"
        b"From: Alice <alice@example.org>\nTo: Bob <bob@example.net>\n"
        b"Subject: quarterly report\nDate: Fri, 27 Nov 2026 10:08:17 +0000\n"
        b"Message-ID: <20261127100817.abc@example.org>\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=b1\n\n--b1\nContent-Type: text/plain\n\n"
    )
    text = " ".join(rng.choice(words) for _ in range(size // 12)).encode()
    attach = base64.encodebytes(os.urandom(size // 3))  # already-compressed payloads
    return (head + text[: size // 2] + b"\n--b1\nContent-Type: application/pdf\n"
            b"Content-Transfer-Encoding: base64\n\n" + attach + b"--b1--\n")[:size]


def envelope_sizes(rng: random.Random) -> None:
    envs = sample_envelopes(1000, rng)
    plain = [len(dump_envelope(e)) for e in envs]
    packed = [len(compress(dump_envelope(e))) for e in envs]
    saved = 1 - sum(packed) / sum(plain)
    print(f"envelope: plain {sum(plain) / len(plain):.0f} B, gzip {sum(packed) / len(packed):.0f} B"
          f" -> {saved:.0%} saved (1000 envelopes; an envelope takes a 4 KiB fs block either way)")
    full = [dataclasses.replace(e, orig_rcpt=e.rcpt, username="alice", tag="inbound",
                                dsn_envid="QQ314159", dsn_orcpt="rfc822;" + e.rcpt,
                                mda_exec="/usr/local/bin/procmail -f -", esc_class=4,
                                esc_code=20) for e in envs]
    plain_f = sum(len(dump_envelope(e)) for e in full)
    packed_f = sum(len(compress(dump_envelope(e))) for e in full)
    print(f"envelope, most fields set: plain {plain_f / len(full):.0f} B, gzip "
          f"{packed_f / len(full):.0f} B -> {1 - packed_f / plain_f:.0%} saved")
    for size in (4_000, 100_000):
        msgs = [sample_message(rng, size) for _ in range(20)]
        ratio = sum(len(compress(m)) for m in msgs) / sum(len(m) for m in msgs)
        print(f"message {size // 1000} kB (text + base64 attachment): "
              f"{1 - ratio:.0%} saved by gzip")


def throughput(spool_root: Path, mb: int, rng: random.Random) -> None:
    data = sample_message(rng, mb * 1024 * 1024)
    small = sample_message(rng, 4000)
    env = sample_envelopes(1, rng)[0]
    for name, compression, key in MODES:
        spool = spool_root / name
        front = QueueFront(FsBackend(spool), spool=spool, compression=compression,
                           encryption_key=key, kdf_n=SCRYPT_N)
        msgid = front.message_create()
        front.message_path(msgid).write_bytes(data)
        front.envelope_create(msgid, env)
        t0 = time.perf_counter()
        front.message_commit(msgid)
        t1 = time.perf_counter()
        fd = front.message_fd_for_delivery(msgid)
        t2 = time.perf_counter()
        os.close(fd)
        with front.backend.get(Kind.MESSAGE, msgid) as f:
            stored = len(f.read())
        # Small messages: commits per second, fsyncs included.
        n, t3 = 200, time.perf_counter()
        for _ in range(n):
            m = front.message_create()
            front.message_path(m).write_bytes(small)
            front.envelope_create(m, env)
            front.message_commit(m)
        rate = n / (time.perf_counter() - t3)
        print(f"{name:9s} commit {mb / (t1 - t0):7.1f} MB/s  read {mb / (t2 - t1):7.1f} MB/s  "
              f"stored {stored / len(data):5.1%}  4 kB msgs {rate:6.0f}/s (fsync-bound)")


def walk_rate(spool_root: Path, rng: random.Random, count: int = 4000) -> None:
    """Start-up cost: envelopes per second through recover() + walk()."""
    envs = sample_envelopes(count, rng)
    for name, compression, key in MODES:
        spool = spool_root / f"walk-{name}"
        front = QueueFront(FsBackend(spool), spool=spool, compression=compression,
                           encryption_key=key)
        by_msg: dict[int, list[Envelope]] = {}
        for env in envs:
            by_msg.setdefault(env.msgid, []).append(env)
        for msgid, group in by_msg.items():
            front.backend.put(Kind.MESSAGE, msgid, b"Received: x\n\n")
            front.backend.put_many(
                (Kind.ENVELOPE, e.evpid, front._encode(Kind.ENVELOPE, e.evpid,
                                                       [dump_envelope(e)]))
                for e in group)
        fresh = QueueFront(FsBackend(spool), spool=spool, compression=compression,
                           encryption_key=key, cache_size=0)
        t0 = time.perf_counter()
        fresh.recover()
        n = sum(1 for _ in fresh.walk())
        print(f"{name:9s} start-up walk: {n / (time.perf_counter() - t0):7.0f} envelopes/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--spool", type=Path, default=None)
    args = ap.parse_args()
    rng = random.Random(42)
    envelope_sizes(rng)
    with tempfile.TemporaryDirectory(dir=args.spool) as tmp:
        throughput(Path(tmp), args.mb, rng)
        walk_rate(Path(tmp), rng)


if __name__ == "__main__":
    main()
