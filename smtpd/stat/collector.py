"""Per-process stat batching: updates accumulate during one loop iteration and
leave as one imsg to control (DESIGN.md §3), so a busy process pays a dict
update per event, not an imsg."""

from __future__ import annotations

import time
from collections.abc import Callable

from smtpd.stat.kinds import Histogram, StatKind, StatOp, StatUpdate


class StatCollector:
    def __init__(self, schedule_flush: Callable[[], None]) -> None:
        self._schedule_flush = schedule_flush
        self._increments: dict[str, int] = {}
        self._sets: dict[str, tuple[StatKind, int]] = {}
        self._histograms: dict[str, Histogram] = {}
        self._pending = False

    def _dirty(self) -> None:
        if not self._pending:
            self._pending = True
            self._schedule_flush()

    def increment(self, key: str, value: int = 1) -> None:
        self._increments[key] = self._increments.get(key, 0) + value
        self._dirty()

    def decrement(self, key: str, value: int = 1) -> None:
        self.increment(key, -value)

    def set(self, key: str, value: int, kind: StatKind = StatKind.COUNTER) -> None:
        self._increments.pop(key, None)
        self._sets[key] = (kind, value)
        self._dirty()

    def timestamp(self, key: str, when: float | None = None) -> None:
        self.set(key, int(time.time() if when is None else when), StatKind.TIMESTAMP)

    def duration(self, key: str, ns: int) -> None:
        self.set(key, ns, StatKind.DURATION)

    def observe(self, key: str, ns: int) -> None:
        hist = self._histograms.get(key)
        if hist is None:
            hist = self._histograms[key] = Histogram()
        hist.observe(ns)
        if not self._pending:
            self._dirty()

    def drain(self) -> list[StatUpdate]:
        updates = [StatUpdate(k, kind, StatOp.SET, v) for k, (kind, v) in self._sets.items()]
        updates += [StatUpdate(k, StatKind.COUNTER, StatOp.INCREMENT, v)
                    for k, v in self._increments.items()]
        updates += [StatUpdate(k, StatKind.HISTOGRAM, StatOp.MERGE, h.to_wire())
                    for k, h in self._histograms.items()]
        self._sets.clear()
        self._increments.clear()
        self._histograms.clear()
        self._pending = False
        return updates
