"""A persistent stat backend: every update batch lands in an SQLite file.

The seed's promise: "with a persistent storage backend for statistics you can
easily graph your events profiling in real-time".  Current values live in
memory (a RamStat); every second at most, a snapshot of the keys that changed
is appended to a `samples(ts, key, value)` table in one transaction, so
graphing a key is `SELECT ts, value FROM samples WHERE key = ?`.
Writes are batched so the daemon's cost stays flat whatever the update rate.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from smtpd.stat.kinds import Histogram, StatUpdate
from smtpd.stat.ramstat import RamStat

FLUSH_INTERVAL_NS = 1_000_000_000


class PersistentStat:
    def __init__(self, path: str) -> None:
        self._ram = RamStat()
        self._db = sqlite3.connect(path, isolation_level=None)
        # control opens the file before its chroot and keeps only this fd:
        # no -wal/-journal side files (they would be created by path).  Stats
        # are history, not mail: losing the last second in a crash is fine.
        self._db.execute("PRAGMA journal_mode=MEMORY")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS samples (ts INTEGER, key TEXT, value INTEGER)")
        self._db.execute("CREATE INDEX IF NOT EXISTS samples_key_ts ON samples (key, ts)")
        self._dirty: set[str] = set()
        self._last_flush_ns = -FLUSH_INTERVAL_NS  # the first batch is written at once

    def apply(self, updates: list[StatUpdate], now_ns: int) -> None:
        self._ram.apply(updates, now_ns)
        self._dirty.update(u.key for u in updates)
        if now_ns - self._last_flush_ns >= FLUSH_INTERVAL_NS:
            self.flush(now_ns)

    def flush(self, now_ns: int) -> None:
        if not self._dirty:
            return
        raw = self._ram.raw()
        rows: list[tuple[int, str, int]] = []
        for key in sorted(self._dirty):
            _, value = raw[key]
            if isinstance(value, Histogram):
                rows.append((now_ns, key + ".count", value.count))
                rows.append((now_ns, key + ".total_ns", value.total_ns))
                rows.append((now_ns, key + ".max_ns", value.max_ns))
            else:
                rows.append((now_ns, key, value))
        with self._db:
            self._db.executemany("INSERT INTO samples VALUES (?, ?, ?)", rows)
        self._dirty.clear()
        self._last_flush_ns = now_ns

    def items(self) -> Iterator[tuple[str, str]]:
        return self._ram.items()

    def close(self) -> None:
        self.flush(self._last_flush_ns + FLUSH_INTERVAL_NS)
        self._db.close()
