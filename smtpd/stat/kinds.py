"""Stat kinds and updates (DESIGN.md §3, the seed's typed stat_backend).

A stat value is typed so that a backend can store it precisely and render it
the way an operator expects: a counter is an integer that can be incremented,
decremented (by any amount) or set; a timestamp is seconds since the epoch; a
duration is integer nanoseconds (the seed's timeval/timespec); a histogram
aggregates many durations (imsg profiling).  New kinds extend `StatKind`.
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from dataclasses import dataclass

# Profiling latency buckets (upper bounds, ns): 1µs … 1s by decades and halves.
HISTOGRAM_BOUNDS_NS: tuple[int, ...] = (
    1_000, 5_000, 10_000, 50_000, 100_000, 500_000,
    1_000_000, 5_000_000, 10_000_000, 50_000_000, 100_000_000, 1_000_000_000,
)


class StatKind(enum.IntEnum):
    COUNTER = 1
    TIMESTAMP = 2
    DURATION = 3
    HISTOGRAM = 4


class StatOp(enum.IntEnum):
    INCREMENT = 1  # counter += value (a negative value decrements)
    SET = 2        # any kind: replace the value
    MERGE = 3      # histogram: add another histogram's observations


@dataclass(frozen=True, slots=True)
class StatUpdate:
    key: str
    kind: StatKind
    op: StatOp
    value: int | tuple[int, ...]

    def to_wire(self) -> list[object]:
        return [self.key, int(self.kind), int(self.op),
                list(self.value) if isinstance(self.value, tuple) else self.value]

    @classmethod
    def from_wire(cls, item: object) -> StatUpdate:
        if not (isinstance(item, list) and len(item) == 4):
            raise ValueError("stat update must be a 4-item list")
        key, kind, op, value = item
        if not isinstance(key, str) or not key or len(key) > 256:
            raise ValueError("bad stat key")
        kind_ = StatKind(kind)
        op_ = StatOp(op)
        if kind_ is StatKind.HISTOGRAM:
            if not (isinstance(value, list) and all(isinstance(v, int) for v in value)
                    and len(value) == Histogram.WIRE_LEN):
                raise ValueError("bad histogram value")
            return cls(key, kind_, op_, tuple(value))
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("bad stat value")
        return cls(key, kind_, op_, value)


@dataclass(slots=True)
class Histogram:
    """count, total and max of observed durations plus bucket counts."""

    WIRE_LEN = 3 + len(HISTOGRAM_BOUNDS_NS) + 1

    count: int = 0
    total_ns: int = 0
    max_ns: int = 0
    buckets: list[int] | None = None

    def observe(self, ns: int) -> None:
        # On the profiling hot path: bisect (C) rather than a Python loop.
        if self.buckets is None:
            self.buckets = [0] * (len(HISTOGRAM_BOUNDS_NS) + 1)
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns
        self.buckets[bisect_left(HISTOGRAM_BOUNDS_NS, ns)] += 1

    def merge(self, wire: tuple[int, ...]) -> None:
        other = Histogram.from_wire(wire)
        if self.buckets is None:
            self.buckets = [0] * (len(HISTOGRAM_BOUNDS_NS) + 1)
        self.count += other.count
        self.total_ns += other.total_ns
        self.max_ns = max(self.max_ns, other.max_ns)
        assert other.buckets is not None
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n

    def to_wire(self) -> tuple[int, ...]:
        buckets = self.buckets or [0] * (len(HISTOGRAM_BOUNDS_NS) + 1)
        return (self.count, self.total_ns, self.max_ns, *buckets)

    @classmethod
    def from_wire(cls, wire: tuple[int, ...]) -> Histogram:
        return cls(wire[0], wire[1], wire[2], list(wire[3:]))

    def percentile_ns(self, p: float) -> int:
        """Upper bound of the bucket holding the p-th percentile (0 < p <= 1)."""
        if not self.count or self.buckets is None:
            return 0
        rank = p * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return HISTOGRAM_BOUNDS_NS[i] if i < len(HISTOGRAM_BOUNDS_NS) else self.max_ns
        return self.max_ns
