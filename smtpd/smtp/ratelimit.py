"""Rate limits per client address and per authenticated user (our extension,
`smtp rate connections|messages|recipients N per DURATION`), and per
destination domain on the relay side (`smtp rate relay N per DURATION`).

Sans-IO with an injected clock.  Each limit counts events in fixed windows
per key ("ip:192.0.2.7", "user:alice"); a key over its count for the current
window is refused until the window ends.  Memory is bounded: at most
MAX_KEYS keys per kind, the least recently used forgotten first (a forgotten
key starts a fresh window, which errs on the side of accepting mail).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_KEYS = 50000


class RateKind(enum.StrEnum):
    CONNECTIONS = "connections"
    MESSAGES = "messages"
    RECIPIENTS = "recipients"
    RELAY = "relay"  # relayed recipients per destination domain


@dataclass(frozen=True)
class Rate:
    kind: RateKind
    count: int
    window: int  # seconds


@dataclass
class _Window:
    start: float
    used: int


class RateLimiter:
    def __init__(self, rates: Iterable[Rate], clock: Callable[[], float]) -> None:
        self.rates = {r.kind: r for r in rates}
        self.clock = clock
        self.windows: dict[RateKind, OrderedDict[str, _Window]] = {
            kind: OrderedDict() for kind in self.rates}

    def allow(self, kind: RateKind, keys: Iterable[str], n: int = 1) -> str | None:
        """Count n events for every key; the first key over its limit, or None.
        Nothing is counted when one key is refused."""
        rate = self.rates.get(kind)
        if rate is None:
            return None
        now = self.clock()
        table = self.windows[kind]
        windows: list[_Window] = []
        for key in keys:
            w = table.get(key)
            if w is None or now - w.start >= rate.window:
                w = table[key] = _Window(now, 0)
            table.move_to_end(key)
            if w.used + n > rate.count:
                return key
            windows.append(w)
        for w in windows:
            w.used += n
        while len(table) > MAX_KEYS:
            table.popitem(last=False)
        return None

    def retry_after(self, kind: RateKind, key: str) -> int:
        rate = self.rates[kind]
        w = self.windows[kind].get(key)
        return 0 if w is None else max(0, int(w.start + rate.window - self.clock()) + 1)
