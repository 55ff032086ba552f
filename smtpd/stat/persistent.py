"""A persistent stat backend: every key sampled at a fixed interval into SQLite.

The seed's promise: "with a persistent storage backend for statistics you can
easily graph your events profiling in real-time".  Current values live in
memory (a RamStat, so `show stats` never touches the disk).  Every `interval`
seconds control calls `sample()`: the value of every key is read and kept in
three resolutions -- raw (one sample per interval, kept `raw_keep`), minute
(the value at the end of each minute, kept `minute_keep`) and hour (kept
`keep`).  A series is stored run-length encoded: a row is written only when
the key's value differs from the last row of that resolution, so an idle key
costs nothing and a file holds months of history in a few megabytes; readers
carry a value forward until the next row (`history()` does).

Layout: `series(id, name)` and `samples(res, id, ts, value)` (res = 0 raw,
60 minute, 3600 hour; ts in seconds), primary key (res, id, ts).  A counter
that ran across a restart starts again from 0 (as upstream's ramstat); its
history continues in the same file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from smtpd.stat.kinds import Histogram, StatKind, StatUpdate
from smtpd.stat.ramstat import RamStat

RAW, MINUTE, HOUR = 0, 60, 3600
# Histogram parts that make a series (the rest is derived: mean = total/count).
HISTOGRAM_PARTS = ("count", "total_ns", "max_ns")


@dataclass(frozen=True)
class Retention:
    interval: int = 1                 # seconds between two samples of every key
    raw_keep: int = 3600              # raw samples: the last hour
    minute_keep: int = 7 * 86400      # minute samples: the last week
    keep: int = 365 * 86400           # hour samples: `stats persistent ... keep D`

    def resolution_for(self, span: int) -> int:
        """The finest resolution that still covers `span` seconds back."""
        if span <= self.raw_keep:
            return RAW
        if span <= self.minute_keep:
            return MINUTE
        return HOUR


def flatten(raw: dict[str, tuple[StatKind, int | Histogram]]) -> dict[str, int]:
    """Every stat as integer series: a histogram gives key.count/.total_ns/.max_ns."""
    out: dict[str, int] = {}
    for key, (_kind, value) in raw.items():
        if isinstance(value, Histogram):
            out[key + ".count"] = value.count
            out[key + ".total_ns"] = value.total_ns
            out[key + ".max_ns"] = value.max_ns
        else:
            out[key] = value
    return out


class PersistentStat:
    def __init__(self, path: str, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._ram = RamStat()
        self._db = sqlite3.connect(path, isolation_level=None)
        # control opens the file before its chroot and keeps only this fd:
        # no -wal/-journal side files (they would be created by path) and no
        # temp files.  Stats are history, not mail: losing the last interval
        # in a crash is fine, so no fsync either.
        self._db.execute("PRAGMA journal_mode=MEMORY")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.execute("CREATE TABLE IF NOT EXISTS series "
                         "(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS samples (res INTEGER NOT NULL, "
                         "id INTEGER NOT NULL, ts INTEGER NOT NULL, value INTEGER NOT NULL, "
                         "PRIMARY KEY (res, id, ts)) WITHOUT ROWID")
        self._ids: dict[str, int] = dict(self._db.execute("SELECT name, id FROM series"))
        # (ts, value) last written per resolution and series id: run-length
        # encoding, and the row that expiry must keep (it carries the value on)
        self._written: dict[int, dict[int, tuple[int, int]]] = {RAW: {}, MINUTE: {}, HOUR: {}}
        self._last_bucket: dict[int, int] = {MINUTE: -1, HOUR: -1}
        self._next_expiry = 0

    # -- the StatBackend protocol -----------------------------------------------

    def apply(self, updates: list[StatUpdate], now_ns: int) -> None:
        self._ram.apply(updates, now_ns)

    def raw(self) -> dict[str, tuple[StatKind, int | Histogram]]:
        return self._ram.raw()

    def items(self) -> Iterator[tuple[str, str]]:
        return self._ram.items()

    def close(self) -> None:
        self._db.close()

    # -- sampling -------------------------------------------------------------

    def _series_id(self, name: str) -> int:
        sid = self._ids.get(name)
        if sid is None:
            cur = self._db.execute("INSERT INTO series (name) VALUES (?)", (name,))
            assert cur.lastrowid is not None
            sid = self._ids[name] = cur.lastrowid
        return sid

    def sample(self, now_ns: int, extra: dict[str, int] | None = None) -> int:
        """Record every key's current value; returns the rows written."""
        ts = now_ns // 1_000_000_000
        values = flatten(self._ram.raw())
        if extra:
            values.update(extra)
        rows: list[tuple[int, int, int, int]] = []
        self._db.execute("BEGIN")
        try:
            current = {self._series_id(name): v for name, v in values.items()}
            rows += self._changed(RAW, ts, current)
            for res in (MINUTE, HOUR):
                bucket = ts // res
                if bucket != self._last_bucket[res]:
                    # the value at the start of a new minute/hour stands for it
                    self._last_bucket[res] = bucket
                    rows += self._changed(res, bucket * res, current)
            self._db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?)", rows)
            if ts >= self._next_expiry:
                self._expire(ts)
                self._next_expiry = ts + 60
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return len(rows)

    def _changed(self, res: int, ts: int, current: dict[int, int]
                 ) -> list[tuple[int, int, int, int]]:
        written = self._written[res]
        rows = []
        for sid, value in current.items():
            last = written.get(sid)
            if last is None or last[1] != value:
                written[sid] = (ts, value)
                rows.append((res, sid, ts, value))
        return rows

    def _expire(self, now: int) -> None:
        r = self.retention
        for res, keep in ((RAW, r.raw_keep), (MINUTE, r.minute_keep), (HOUR, r.keep)):
            cutoff = now - keep
            written = self._written[res]
            # Keep each live series' newest row whatever its age: an unchanged
            # value is still the value.  Series not seen in this run just age out.
            self._db.executemany(
                "DELETE FROM samples WHERE res = ? AND id = ? AND ts < ?",
                [(res, sid, min(cutoff, ts)) for sid, (ts, _v) in written.items()])
            live = tuple(written)
            self._db.execute(
                f"DELETE FROM samples WHERE res = ? AND ts < ? AND id NOT IN "
                f"({','.join('?' * len(live))})" if live else
                "DELETE FROM samples WHERE res = ? AND ts < ?", (res, cutoff, *live))

    # -- reading ----------------------------------------------------------------

    def history(self, key: str, since: int, now: int) -> list[tuple[int, int]]:
        """(ts, value) points of `key` from `since` (epoch seconds) to now: the
        value in force at `since` first, then one point per change."""
        sid = self._ids.get(key)
        if sid is None:
            return []
        res = self.retention.resolution_for(now - since)
        points: list[tuple[int, int]] = []
        before = self._db.execute(
            "SELECT ts, value FROM samples WHERE res = ? AND id = ? AND ts <= ? "
            "ORDER BY ts DESC LIMIT 1", (res, sid, since)).fetchone()
        if before is not None:
            points.append((since, int(before[1])))
        for ts, value in self._db.execute(
                "SELECT ts, value FROM samples WHERE res = ? AND id = ? AND ts > ? "
                "ORDER BY ts", (res, sid, since)):
            points.append((int(ts), int(value)))
        return points

    def keys(self) -> list[str]:
        return sorted(self._ids)
