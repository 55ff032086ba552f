"""Scheduler benchmark: memory per envelope and throughput of the ramqueue.

    .venv/bin/python bench/scheduler_bench.py [N] [--rcpts K]

Loads N envelopes (K per message; half due now as MDA, half MTA retries due
later with creation times spread over a day, as after a restart on a busy
relay) and prints:
- bytes per envelope (tracemalloc, the whole backend after loading);
- insert+commit throughput;
- batch throughput (every due envelope handed out, then delivered);
- schedule-all + batch throughput for the envelopes not due yet;
- remove-all + batch(REMOVE) throughput.
Timings run without tracemalloc (it slows allocation down several times).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

from smtpd.scheduler import BatchKind, EnvelopeType, RamQueue, Sched, SchedulerInfo

NOW = 1_800_000_000
BATCH = 1000


def load(rq: RamQueue, n: int, rcpts: int) -> None:
    msgid = 0x10000000
    done = 0
    while done < n:
        msgid += 1
        k = min(rcpts, n - done)
        future = msgid & 1
        for j in range(k):
            if future:
                info = SchedulerInfo(
                    evpid=(msgid << 32) | (j + 1),
                    type=EnvelopeType.MTA,
                    creation=NOW - (msgid % 3600),
                    expire=4 * 86400,
                    retry=1 + msgid % 5,
                    dest=f"d{(msgid + j) % 100}.test",
                )
            else:
                info = SchedulerInfo(
                    evpid=(msgid << 32) | (j + 1),
                    type=EnvelopeType.MDA,
                    creation=NOW,
                    expire=4 * 86400,
                )
            rq.insert(info)
        rq.commit(msgid, NOW)
        done += k


def drain(rq: RamQueue, mask: Sched, now: int, deliver: bool) -> int:
    count = 0
    while True:
        b = rq.batch(mask, now, BATCH)
        if b.kind is BatchKind.NONE:
            return count
        count += len(b.evpids)
        if deliver and b.kind is BatchKind.SCHEDULE:
            for evpid in b.evpids:
                rq.delete(evpid)


def rate(count: int, seconds: float) -> str:
    return f"{count:>9} in {seconds:6.2f} s = {count / seconds:>10,.0f}/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=100_000)
    ap.add_argument("--rcpts", type=int, default=1, help="envelopes per message")
    args = ap.parse_args()
    n, rcpts = args.n, args.rcpts

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    rq = RamQueue()
    load(rq, n, rcpts)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"envelopes: {len(rq)}  per message: {rcpts}")
    print(f"memory:        {used / n:7.1f} bytes/envelope ({used / 2**20:.1f} MiB)")
    del rq
    gc.collect()

    rq = RamQueue()
    t = time.perf_counter()
    load(rq, n, rcpts)
    print("insert+commit:", rate(n, time.perf_counter() - t))

    t = time.perf_counter()
    got = drain(rq, Sched.ALL, NOW, deliver=True)
    print("batch+delete: ", rate(got, time.perf_counter() - t), "(due now)")

    t = time.perf_counter()
    scheduled = rq.schedule(None, NOW)
    got = drain(rq, Sched.ALL, NOW, deliver=True)
    assert got == scheduled, (got, scheduled)
    print("schedule all: ", rate(got, time.perf_counter() - t), "(+batch+delete)")
    assert len(rq) == 0

    load(rq, n, rcpts)
    t = time.perf_counter()
    removed = rq.remove(None, NOW)
    got = drain(rq, Sched.REMOVE, NOW, deliver=False)
    assert got == removed == n, (got, removed, n)
    print("remove all:   ", rate(got, time.perf_counter() - t), "(+batch REMOVE)")

    load(rq, n, rcpts)
    t = time.perf_counter()
    first = rq.batch(Sched.ALL, NOW + 5 * 86400, BATCH)
    got = len(first.evpids) + drain(rq, Sched.ALL, NOW + 5 * 86400, deliver=False)
    print("expire all:   ", rate(got, time.perf_counter() - t), "(ttl passed, batch EXPIRE)")


if __name__ == "__main__":
    main()
