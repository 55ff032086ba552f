"""The scheduler backend interface and the registry of backends.

Upstream's `struct scheduler_backend` (smtpd.h) with time passed in: a
backend only keeps schedules; the `Scheduler` front (front.py) does the
cross-cutting work (statistics, in-flight accounting, pause state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol

from .ramqueue import RamQueue
from .types import Batch, EnvelopeState, EnvelopeType, Sched, SchedulerError, SchedulerInfo


class SchedulerBackend(Protocol):
    """What every scheduler backend implements.

    Targets of schedule/remove/suspend/resume are an evpid (> 0xffffffff),
    a msgid (<= 0xffffffff) or None for every committed envelope; each
    returns how many envelopes it affected (0 for unknown ids).
    """

    def insert(self, info: SchedulerInfo) -> int:
        """Add an envelope of an uncommitted message; returns its next try."""
        ...

    def commit(self, msgid: int, now: int) -> int: ...

    def rollback(self, msgid: int) -> int: ...

    def update(self, info: SchedulerInfo, now: int) -> int:
        """An in-flight envelope tempfailed; returns its next try."""
        ...

    def delete(self, evpid: int) -> None: ...

    def hold(self, evpid: int, holdq: int) -> bool: ...

    def release(self, kind: EnvelopeType, holdq: int, n: int) -> int: ...

    def batch(self, mask: Sched, now: int, limit: int) -> Batch: ...

    def messages(self, from_msgid: int, n: int) -> list[int]: ...

    def envelopes(self, from_evpid: int, n: int) -> list[EnvelopeState]: ...

    def schedule(self, target: int | None, now: int) -> int: ...

    def remove(self, target: int | None, now: int) -> int: ...

    def suspend(self, target: int | None) -> int: ...

    def resume(self, target: int | None, now: int) -> int: ...

    def query(self, ident: int) -> bool: ...

    def has_envelope(self, evpid: int) -> bool: ...

    def stats(self) -> dict[str, int]: ...

    def __len__(self) -> int: ...


BackendFactory = Callable[[Sequence[int]], SchedulerBackend]

# name -> factory taking the `bounce warn-interval` list (upstream: ramqueue only)
BACKENDS: Final[Mapping[str, BackendFactory]] = {"ramqueue": RamQueue}


def open_backend(name: str, warn_intervals: Sequence[int] = ()) -> SchedulerBackend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise SchedulerError(f'cannot find scheduler backend "{name}"') from None
    return factory(warn_intervals)
