"""The persistent backend: every key sampled each interval, run-length encoded
in three resolutions, expired by age, and history readable across restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from smtpd.stat.backend import open_backend
from smtpd.stat.kinds import Histogram, StatKind, StatOp, StatUpdate
from smtpd.stat.persistent import HOUR, MINUTE, RAW, PersistentStat, Retention

S = 1_000_000_000
T0 = 1_800_000_000  # a round hour (divisible by 3600)


def inc(key: str, n: int = 1) -> StatUpdate:
    return StatUpdate(key, StatKind.COUNTER, StatOp.INCREMENT, n)


def rows(path: Path, res: int) -> list[tuple[str, int, int]]:
    return sqlite3.connect(path).execute(
        "SELECT name, ts, value FROM samples JOIN series USING (id) WHERE res = ? "
        "ORDER BY name, ts", (res,)).fetchall()


def test_every_key_sampled_and_changes_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "stats.db"
    b = PersistentStat(str(path))
    b.apply([inc("smtp.session"), inc("idle", 0)], T0 * S)
    for second in range(5):
        if second in (2, 3):
            b.apply([inc("smtp.session")], (T0 + second) * S)
        b.sample((T0 + second) * S)
    raw = rows(path, RAW)
    # idle never changed: one row; smtp.session: 1 at T0, 2 at T0+2, 3 at T0+3
    assert raw == [("idle", T0, 0), ("smtp.session", T0, 1),
                   ("smtp.session", T0 + 2, 2), ("smtp.session", T0 + 3, 3)]
    # history carries values forward: at T0+1 the value was still 1
    assert b.history("smtp.session", T0 + 1, T0 + 4) == [(T0 + 1, 1), (T0 + 2, 2), (T0 + 3, 3)]
    assert b.history("idle", T0 + 4, T0 + 4) == [(T0 + 4, 0)]
    assert b.history("nosuch", T0, T0 + 4) == []
    b.close()


def test_histograms_become_three_series(tmp_path: Path) -> None:
    b = PersistentStat(str(tmp_path / "s.db"))
    h = Histogram()
    h.observe(2_000)
    h.observe(8_000)
    b.apply([StatUpdate("profiling.imsg.queue.X", StatKind.HISTOGRAM, StatOp.MERGE,
                        h.to_wire())], T0 * S)
    b.sample(T0 * S)
    assert b.keys() == ["profiling.imsg.queue.X.count", "profiling.imsg.queue.X.max_ns",
                        "profiling.imsg.queue.X.total_ns"]
    assert b.history("profiling.imsg.queue.X.total_ns", T0, T0) == [(T0, 10_000)]


def test_downsampling_and_retention(tmp_path: Path) -> None:
    path = tmp_path / "stats.db"
    r = Retention(interval=1, raw_keep=120, minute_keep=3 * 3600, keep=2 * 86400)
    b = PersistentStat(str(path), r)
    # three hours of a counter that moves every second: 10800 samples
    for second in range(3 * 3600):
        b.apply([inc("scheduler.delivery.ok")], (T0 + second) * S)
        b.sample((T0 + second) * S)
    raw = rows(path, RAW)
    minute = rows(path, MINUTE)
    hour = rows(path, HOUR)
    # raw kept for its 120 s (plus the minute since the last expiry pass)
    assert 120 <= len(raw) <= 181
    assert len(minute) == 180 and len(hour) == 3
    assert minute[1] == ("scheduler.delivery.ok", T0 + 60, 61)
    assert hour[-1] == ("scheduler.delivery.ok", T0 + 7200, 7201)
    # the resolution follows the span asked for
    now = T0 + 3 * 3600 - 1
    assert len(b.history("scheduler.delivery.ok", now - 60, now)) == 61
    assert len(b.history("scheduler.delivery.ok", now - 3600, now)) == 61
    assert len(b.history("scheduler.delivery.ok", now - 5 * 3600, now)) == 3
    b.close()
    size = path.stat().st_size
    assert size < 200_000, size


def test_an_unchanged_value_outlives_its_retention(tmp_path: Path) -> None:
    r = Retention(interval=1, raw_keep=60, minute_keep=7 * 86400, keep=30 * 86400)
    b = PersistentStat(str(tmp_path / "s.db"), r)
    b.apply([inc("mta.session", 4)], T0 * S)
    for second in range(0, 600, 10):
        b.sample((T0 + second) * S)
    assert b.history("mta.session", T0 + 590, T0 + 590) == [(T0 + 590, 4)]


def test_history_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "stats.db"
    b = PersistentStat(str(path))
    b.apply([inc("smtp.message", 5)], T0 * S)
    b.sample(T0 * S)
    b.close()
    # a restart: counters start again from zero, history goes on
    b = PersistentStat(str(path))
    b.apply([inc("smtp.message", 2)], (T0 + 10) * S)
    b.sample((T0 + 10) * S)
    assert b.history("smtp.message", T0, T0 + 10) == [(T0, 5), (T0 + 10, 2)]
    assert [line for line in path.parent.iterdir()] == [path]  # no side files


def test_open_backend_names() -> None:
    with pytest.raises(ValueError):
        open_backend("nosuch")
    with pytest.raises(ValueError):
        open_backend("persistent")
