"""The queue's side of a streamed `show queue` (smtpd/control/listing.py):
open walks, each read a page at a time.

A walk is QueueFront.walk(), a generator over the spool that yields each
envelope once while deliveries and new mail change it.  Only the walk's
position and one page live in memory.  Walks are dropped when their client
stops asking: after IDLE_SECONDS without a page, or when MAX_OPEN are open
and another starts (the oldest goes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from smtpd.queue.envelope import Envelope

PAGE = 500  # envelopes per page: a few hundred KiB of lines at most
MAX_OPEN = 16
IDLE_SECONDS = 300.0


@dataclass(slots=True)
class _Walk:
    envelopes: Iterator[Envelope]
    used: float  # monotonic time of the last page


class Listings:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._walks: dict[int, _Walk] = {}
        self._clock = clock

    def __len__(self) -> int:
        return len(self._walks)

    def open(self, key: int, envelopes: Iterator[Envelope]) -> None:
        now = self._clock()
        for stale in [k for k, w in self._walks.items() if now - w.used > IDLE_SECONDS]:
            del self._walks[stale]
        while len(self._walks) >= MAX_OPEN:
            del self._walks[min(self._walks, key=lambda k: self._walks[k].used)]
        self._walks[key] = _Walk(envelopes, now)

    def page(self, key: int, size: int = PAGE) -> tuple[list[Envelope], bool] | None:
        """The next envelopes of walk `key` and whether any may follow;
        None for a walk that is not (or no longer) open."""
        walk = self._walks.get(key)
        if walk is None:
            return None
        walk.used = self._clock()
        envs: list[Envelope] = []
        for env in walk.envelopes:
            envs.append(env)
            if len(envs) >= size:
                return envs, True
        del self._walks[key]
        return envs, False

    def close(self, key: int) -> None:
        self._walks.pop(key, None)
