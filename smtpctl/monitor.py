"""`smtpctl monitor`: upstream's table of per-second deltas until interrupted."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

HEADER = ("--- client ---  -- envelope --   ---- relay/delivery --- ------- misc -------\n"
          "curr conn disc  curr  enq  deq   ok tmpfail prmfail loop expire remove bounce")
# (column, stat key, is_gauge)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("curr", "smtp.session", True),
    ("conn", "smtp.session.total", False),
    ("disc", "smtp.session.closed", False),
    ("curr", "scheduler.envelope", True),
    ("enq", "scheduler.envelope.incoming.total", False),
    ("deq", "scheduler.envelope.removed.total", False),
    ("ok", "scheduler.delivery.ok", False),
    ("tmpfail", "scheduler.delivery.tempfail", False),
    ("prmfail", "scheduler.delivery.permfail", False),
    ("loop", "scheduler.delivery.loop", False),
    ("expire", "scheduler.envelope.expired", False),
    ("remove", "scheduler.envelope.removed", False),
    ("bounce", "queue.bounce", False),
)
WIDTHS = (4, 4, 4, 5, 4, 4, 4, 7, 7, 4, 6, 6, 6)


def parse_stats(lines: list[str]) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition("=")
        try:
            values[key] = int(value)
        except ValueError:
            continue
    return values


def row(prev: dict[str, int], cur: dict[str, int]) -> str:
    cells = []
    for (_col, key, gauge), width in zip(COLUMNS, WIDTHS, strict=True):
        value = cur.get(key, 0) if gauge else cur.get(key, 0) - prev.get(key, 0)
        cells.append(str(value).rjust(width))
    return " ".join(cells)


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
