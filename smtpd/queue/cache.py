"""The queue front's LRU envelope cache (upstream's ``queue.evpcache``)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from smtpd.queue.envelope import Envelope


@dataclass(slots=True)
class CacheStats:
    load_hit: int = 0
    load_missed: int = 0
    update_hit: int = 0
    update_missed: int = 0


class EnvelopeCache:
    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("cache size must be >= 0")
        self._size = size
        self._entries: OrderedDict[int, Envelope] = OrderedDict()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, evpid: int) -> Envelope | None:
        env = self._entries.get(evpid)
        if env is None:
            self.stats.load_missed += 1
            return None
        self.stats.load_hit += 1
        self._entries.move_to_end(evpid)
        return env

    def contains(self, evpid: int) -> bool:
        return evpid in self._entries

    def put(self, env: Envelope) -> None:
        if self._size == 0:
            return
        self._entries[env.evpid] = env
        self._entries.move_to_end(env.evpid)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def note_update(self, evpid: int) -> None:
        if evpid in self._entries:
            self.stats.update_hit += 1
        else:
            self.stats.update_missed += 1

    def evict(self, evpid: int) -> None:
        self._entries.pop(evpid, None)

    def evict_message(self, msgid: int) -> None:
        for evpid in [e for e in self._entries if e >> 32 == msgid]:
            del self._entries[evpid]

    def as_stats(self) -> dict[str, int]:
        return {
            "queue.evpcache.load.hit": self.stats.load_hit,
            "queue.evpcache.load.missed": self.stats.load_missed,
            "queue.evpcache.update.hit": self.stats.update_hit,
            "queue.evpcache.update.missed": self.stats.update_missed,
            "queue.evpcache.size": len(self._entries),
        }
