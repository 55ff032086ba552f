"""Typed stats: kinds, wire form, histograms, batching, backends."""

from __future__ import annotations

import pytest

from smtpd.stat.backend import open_backend
from smtpd.stat.collector import StatCollector
from smtpd.stat.kinds import HISTOGRAM_BOUNDS_NS, Histogram, StatKind, StatOp, StatUpdate


def test_histogram_buckets_and_percentiles() -> None:
    h = Histogram()
    for ns in (500, 1_000, 1_001, 2_000_000, 5_000_000_000):
        h.observe(ns)
    assert h.count == 5 and h.max_ns == 5_000_000_000
    assert h.buckets is not None
    assert h.buckets[0] == 2          # <= 1 µs (the bound is inclusive)
    assert h.buckets[1] == 1          # <= 5 µs
    assert h.buckets[-1] == 1         # above the last bound
    assert h.percentile_ns(0.5) == HISTOGRAM_BOUNDS_NS[1]
    assert h.percentile_ns(1.0) == 5_000_000_000
    merged = Histogram()
    merged.merge(h.to_wire())
    merged.merge(h.to_wire())
    assert merged.count == 10 and merged.total_ns == 2 * h.total_ns


def test_wire_round_trip_and_validation() -> None:
    for u in (StatUpdate("a.b", StatKind.COUNTER, StatOp.INCREMENT, -3),
              StatUpdate("t", StatKind.TIMESTAMP, StatOp.SET, 1_700_000_000),
              StatUpdate("h", StatKind.HISTOGRAM, StatOp.MERGE, Histogram().to_wire())):
        assert StatUpdate.from_wire(u.to_wire()) == u
    for bad in (["", 1, 1, 1], ["k", 1, 1, "x"], ["k", 99, 1, 1], ["k", 4, 3, [1, 2]], "x"):
        with pytest.raises(ValueError):
            StatUpdate.from_wire(bad)


def test_collector_batches_one_flush() -> None:
    flushes: list[int] = []
    c = StatCollector(lambda: flushes.append(1))
    c.increment("smtp.session")
    c.increment("smtp.session", 4)
    c.decrement("smtp.session")
    c.set("queue.size", 7)
    c.observe("profiling.imsg.x.Y", 1500)
    c.duration("d", 42)
    assert flushes == [1]          # one flush scheduled for the whole batch
    updates = {u.key: u for u in c.drain()}
    assert updates["smtp.session"].value == 4
    assert updates["queue.size"].op is StatOp.SET
    assert updates["d"].kind is StatKind.DURATION
    assert updates["profiling.imsg.x.Y"].kind is StatKind.HISTOGRAM
    assert c.drain() == []
    c.increment("again")
    assert flushes == [1, 1]


def test_ramstat_renders_sorted_typed_values() -> None:
    b = open_backend("ramstat")
    b.apply([StatUpdate("z", StatKind.COUNTER, StatOp.INCREMENT, 2),
             StatUpdate("z", StatKind.COUNTER, StatOp.INCREMENT, -1),
             StatUpdate("a", StatKind.DURATION, StatOp.SET, 1_500_000_000)], 0)
    assert list(b.items()) == [("a", "1.500000s"), ("z", "1")]


def test_a_counter_that_went_up_and_down_still_appears() -> None:
    """A session opened and closed within one batch must still create
    smtp.session.inet4=0 in show stats (upstream lists it)."""
    c = StatCollector(lambda: None)
    c.increment("smtp.session.inet4")
    c.decrement("smtp.session.inet4")
    b = open_backend("ramstat")
    b.apply(c.drain(), 0)
    assert list(b.items()) == [("smtp.session.inet4", "0")]
