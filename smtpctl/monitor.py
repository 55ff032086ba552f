"""`smtpctl monitor`: upstream's table of per-second deltas until interrupted."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

HEADER = ("--- client ---  -- envelope --   ---- relay/delivery --- ------- misc -------\n"
          "curr conn disc  curr  enq  deq   ok tmpfail prmfail loop expire remove bounce")
WIDTHS = (4, 4, 4, 5, 4, 4, 4, 7, 7, 4, 6, 6, 6)
# Cumulative counters whose per-second deltas make a column (upstream's
# stat_digest fields).  Disconnections and dequeued envelopes follow by
# conservation: what came in minus what the gauge still holds.
CONNECTS = "smtp.session.total"
ENQUEUED = "scheduler.envelope.total"
DELTAS = ("scheduler.delivery.ok", "scheduler.delivery.tempfail", "scheduler.delivery.permfail",
          "scheduler.delivery.loop", "scheduler.envelope.expired", "scheduler.envelope.removed",
          "queue.bounce")


def parse_stats(lines: list[str]) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition("=")
        try:
            values[key] = int(value)
        except ValueError:
            continue
    return values


def columns(prev: dict[str, int], cur: dict[str, int]) -> list[int]:
    def delta(key: str) -> int:
        return cur.get(key, 0) - prev.get(key, 0)

    def held(v: dict[str, int]) -> int:
        # an envelope the scheduler knows is incoming, waiting or inflight
        return sum(v.get(k, 0) for k in ("scheduler.envelope", "scheduler.envelope.incoming",
                                          "scheduler.envelope.inflight"))

    sessions, envelopes = cur.get("smtp.session", 0), held(cur)
    conn, enq = delta(CONNECTS), delta(ENQUEUED)
    disc = conn - (sessions - prev.get("smtp.session", 0))
    deq = enq - (envelopes - held(prev))
    return [sessions, conn, max(disc, 0), envelopes, enq, max(deq, 0),
            *(delta(k) for k in DELTAS)]


def row(prev: dict[str, int], cur: dict[str, int]) -> str:
    return " ".join(str(v).rjust(w) for v, w in zip(columns(prev, cur), WIDTHS, strict=True))


def monitor(fetch: Callable[[], list[str]], count: int | None = None,
            interval: float = 1.0) -> int:
    prev = parse_stats(fetch())
    n = 0
    while count is None or n < count:
        if n % 25 == 0:
            print(HEADER)
        time.sleep(interval)
        cur = parse_stats(fetch())
        print(row(prev, cur))
        sys.stdout.flush()
        prev = cur
        n += 1
    return 0
