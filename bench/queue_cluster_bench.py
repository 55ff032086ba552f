"""Shared-queue figures (issue 14): messages/s through the queue front with
the ``postgres`` backend against ``fs``, on one machine, both durable
(PostgreSQL with fsync and synchronous_commit on; fs fsyncs file and
directory).  A message cycle is: commit (message + 1 envelope, group commits
of ``--group``), load the envelope, read the message, delete.

    .venv/bin/python bench/queue_cluster_bench.py [-n 300] [--group 1,10] [--size 4096]

Starts a throw-away PostgreSQL (tests/servers.py; as root it runs as nobody).
Prints one line per measurement.  Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from smtpd.queue.backend import QueueBackend
from smtpd.queue.envelope import DeliveryType, Envelope
from smtpd.queue.front import QueueFront
from smtpd.queue.fs import FsBackend
from smtpd.queue.pg import PgBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests/ package
from tests.servers import PgServer

KEY = "0123456789abcdef0123456789abcdef"


def cycle(front: QueueFront, n: int, group: int, body: bytes) -> tuple[float, float]:
    """(commit messages/s, deliver-and-delete messages/s)."""
    env = Envelope(evpid=0, type=DeliveryType.MDA, dispatcher="local", sender="a@example.org",
                   rcpt="b@example.net", dest="b@example.net", ctime=1, ttl=345600)
    msgids: list[int] = []
    t0 = time.perf_counter()
    for start in range(0, n, group):
        batch = []
        for _ in range(min(group, n - start)):
            msgid = front.message_create()
            with os.fdopen(front.message_fd(msgid), "wb") as f:
                f.write(body)
            front.envelope_create(msgid, env)
            batch.append(msgid)
        for msgid, result in front.message_commit_many(batch):
            assert not isinstance(result, Exception), result
            msgids.append(msgid)
    t1 = time.perf_counter()
    for msgid in msgids:
        for evpid in front.message_envelopes(msgid):
            front.envelope_load(evpid)
            with front.message_open(msgid) as m:
                m.read()
            front.envelope_delete(evpid)
    t2 = time.perf_counter()
    return n / (t1 - t0), n / (t2 - t1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--group", default="1,10")
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()
    body = (b"Subject: bench\r\n\r\n" + b"x" * 76 + b"\r\n") * max(1, args.size // 78)
    server = PgServer(durable=True).start()
    work = Path(tempfile.mkdtemp(prefix="qcbench-"))
    try:
        for mode, compression, key in [("plain", False, None), ("gzip+aes", True, KEY)]:
            for group in (int(g) for g in args.group.split(",")):
                for name in ("fs", "postgres"):
                    spool = work / f"{name}-{mode}-{group}"
                    backend: QueueBackend = (FsBackend(spool) if name == "fs"
                                             else PgBackend(server.create_database(), "bench"))
                    front = QueueFront(backend, spool=spool, compression=compression,
                                       encryption_key=key)
                    commit, deliver = cycle(front, args.n, group, body)
                    print(f"queue.{name} {mode} group={group} size={len(body)}: "
                          f"commit {commit:.0f} msg/s, load+read+delete {deliver:.0f} msg/s")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
