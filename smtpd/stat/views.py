"""What control prints for `show profile` and `show stats --history`.

Pure functions over a backend's raw values, so smtpctl's report and the tests
use the same code as the daemon.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

from smtpd.stat.kinds import Histogram, StatKind

PROFILE_PREFIX = "profiling.imsg."
_DURATION_RE = re.compile(r"^(\d{1,9})([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# a key as `show stats` prints it: what `--history` accepts
KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,256}$")


def parse_duration(text: str) -> int:
    """`90`, `30s`, `10m`, `2h`, `7d`, `1w` -> seconds (ValueError otherwise)."""
    m = _DURATION_RE.match(text)
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"invalid duration: {text} (a number and s, m, h, d or w)")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class ProfileRow:
    proc: str
    msg: str
    count: int
    total_ns: int
    max_ns: int
    p50_ns: int
    p99_ns: int

    @property
    def mean_ns(self) -> int:
        return self.total_ns // self.count if self.count else 0


def profile_rows(raw: dict[str, tuple[StatKind, int | Histogram]]) -> list[ProfileRow]:
    """Profiled imsg handlers, the most total time first (where time goes)."""
    rows = []
    for key, (_kind, value) in raw.items():
        if not key.startswith(PROFILE_PREFIX) or not isinstance(value, Histogram):
            continue
        proc, _, msg = key[len(PROFILE_PREFIX):].partition(".")
        rows.append(ProfileRow(proc, msg, value.count, value.total_ns, value.max_ns,
                               value.percentile_ns(0.5), value.percentile_ns(0.99)))
    rows.sort(key=lambda r: (-r.total_ns, r.proc, r.msg))
    return rows


def _us(ns: int) -> str:
    return f"{ns / 1000:.1f}"


def profile_lines(rows: list[ProfileRow]) -> list[str]:
    """One line per handler; p50/p99 are histogram bucket upper bounds."""
    if not rows:
        return ["no profiling data: enable it with `smtpctl profile imsg` or `smtpd -T profile`"]
    grand = sum(r.total_ns for r in rows) or 1
    out = [f"{'process':<9} {'imsg':<32} {'count':>8} {'total ms':>10} {'%':>5} "
           f"{'mean us':>9} {'p50 us':>9} {'p99 us':>9} {'max us':>10}"]
    for r in rows:
        out.append(f"{r.proc:<9} {r.msg:<32} {r.count:>8} {r.total_ns / 1e6:>10.1f} "
                   f"{100 * r.total_ns / grand:>5.1f} {_us(r.mean_ns):>9} {_us(r.p50_ns):>9} "
                   f"{_us(r.p99_ns):>9} {_us(r.max_ns):>10}")
    return out


def history_lines(points: list[tuple[int, int]]) -> list[str]:
    """`<ISO 8601 UTC time> <value>`: one line per change, the first line is
    the value in force at the start (a value holds until the next line)."""
    return [f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(ts))} {value}"
            for ts, value in points]


def parse_history_line(line: str) -> tuple[int, int]:
    stamp, _, value = line.partition(" ")
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")), int(value)
