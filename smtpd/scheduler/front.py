"""The scheduler front: what scheduler.c does around its backend, sans-IO.

The scheduler process maps each imsg to one call here and each `Batch` to
imsgs (upstream's scheduler_imsg() and scheduler_timeout()).  The front
owns what is not about schedules: the in-flight count and its limit, the
global MDA/MTA pause state (not persistent: a restart runs both) and the
`scheduler.*` statistics.  All times are passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .backend import SchedulerBackend, open_backend
from .types import (
    DEFAULT_WARN_INTERVALS,
    Batch,
    BatchKind,
    EnvelopeState,
    EnvelopeType,
    Sched,
    SchedulerError,
    SchedulerInfo,
)

# upstream defaults (smtpd.c): scheduler max inflight / max schedule
DEFAULT_MAX_INFLIGHT: Final = 5000
DEFAULT_MAX_SCHEDULE: Final = 100

_COUNTERS: Final = (
    "scheduler.envelope",
    "scheduler.envelope.incoming",
    "scheduler.envelope.total",  # ever submitted: `smtpctl monitor`'s enq column
    "scheduler.envelope.inflight",
    "scheduler.envelope.expired",
    "scheduler.envelope.removed",
    "scheduler.envelope.updated",
    "scheduler.delivery.ok",
    "scheduler.delivery.permfail",
    "scheduler.delivery.tempfail",
    "scheduler.delivery.loop",
)


class Scheduler:
    """Upstream's scheduler process logic around a `SchedulerBackend`."""

    def __init__(
        self,
        backend: SchedulerBackend | None = None,
        *,
        warn_intervals: Sequence[int] = DEFAULT_WARN_INTERVALS,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_schedule: int = DEFAULT_MAX_SCHEDULE,
    ) -> None:
        if max_inflight <= 0 or max_schedule <= 0:
            raise SchedulerError("max inflight and max schedule must be positive")
        self.backend = backend if backend is not None else open_backend("ramqueue", warn_intervals)
        self.max_inflight = max_inflight
        self.max_schedule = max_schedule
        self.paused: set[EnvelopeType] = set()
        self._c = dict.fromkeys(_COUNTERS, 0)

    # -- envelopes arriving -------------------------------------------------

    def submit(self, info: SchedulerInfo) -> int:
        """QUEUE_ENVELOPE_SUBMIT: an envelope of a message being received."""
        nexttry = self.backend.insert(info)
        self._c["scheduler.envelope.incoming"] += 1
        self._c["scheduler.envelope.total"] += 1
        return nexttry

    def commit(self, msgid: int, now: int) -> int:
        """QUEUE_MESSAGE_COMMIT: the message is on disk, schedule its envelopes."""
        n = self.backend.commit(msgid, now)
        self._c["scheduler.envelope.incoming"] -= n
        self._c["scheduler.envelope"] += n
        return n

    def rollback(self, msgid: int) -> int:
        """QUEUE_MESSAGE_ROLLBACK: the message was not accepted."""
        n = self.backend.rollback(msgid)
        self._c["scheduler.envelope.incoming"] -= n
        return n

    def discover(self, info: SchedulerInfo) -> bool:
        """QUEUE_DISCOVER_EVPID (spool walk at start): insert unless known."""
        if self.backend.query(info.evpid):
            return False
        self.submit(info)
        return True

    def discover_commit(self, msgid: int, now: int) -> int:
        """QUEUE_DISCOVER_MSGID: commit what discover() inserted, unless known."""
        if self.backend.query(msgid):
            return 0
        return self.commit(msgid, now)

    # -- results of work handed out -------------------------------------------

    def _done(self, evpid: int, counter: str) -> None:
        self.backend.delete(evpid)
        self._c[counter] += 1
        self._c["scheduler.envelope.inflight"] -= 1
        self._c["scheduler.envelope"] -= 1

    def delivery_ok(self, evpid: int) -> None:
        self._done(evpid, "scheduler.delivery.ok")

    def delivery_permfail(self, evpid: int) -> None:
        self._done(evpid, "scheduler.delivery.permfail")

    def delivery_loop(self, evpid: int) -> None:
        self._done(evpid, "scheduler.delivery.loop")

    def delivery_tempfail(self, info: SchedulerInfo, now: int) -> int:
        """The envelope stays queued; returns its next try.  A delay warning
        due before that try comes out of a later batch() as DELAY."""
        nexttry = self.backend.update(info, now)
        self._c["scheduler.delivery.tempfail"] += 1
        self._c["scheduler.envelope.inflight"] -= 1
        return nexttry

    def hold(self, evpid: int, holdq: int) -> bool:
        """QUEUE_HOLDQ_HOLD: the MTA parks an in-flight envelope."""
        held = self.backend.hold(evpid, holdq)
        self._c["scheduler.envelope.inflight"] -= 1
        return held

    def release(self, kind: EnvelopeType, holdq: int, n: int) -> int:
        """QUEUE_HOLDQ_RELEASE: n envelopes (0: all; -1: all, later) go back."""
        return self.backend.release(kind, holdq, n)

    def queue_remove(self, evpid: int, inflight: bool, now: int) -> None:
        """QUEUE_ENVELOPE_REMOVE: the queue could not load or process it."""
        if inflight:
            self.backend.delete(evpid)
            self._c["scheduler.envelope.inflight"] -= 1
            self._c["scheduler.envelope"] -= 1
        else:
            self.backend.remove(evpid, now)

    def ack(self, evpid: int) -> None:
        """QUEUE_ENVELOPE_ACK: the queue finished a REMOVE or EXPIRE of evpid."""
        if self._c["scheduler.envelope.inflight"] <= 0:
            raise SchedulerError(f"ack of evp:{evpid:016x} with nothing in flight")
        self._c["scheduler.envelope.inflight"] -= 1

    # -- pause state ----------------------------------------------------------

    def pause(self, kind: EnvelopeType) -> bool:
        """`smtpctl pause mda|mta`; False if already paused (command failed)."""
        if kind in self.paused:
            return False
        self.paused.add(kind)
        return True

    def resume(self, kind: EnvelopeType) -> bool:
        if kind not in self.paused:
            return False
        self.paused.discard(kind)
        return True

    def mask(self) -> Sched:
        """scheduler_timeout(): what the next batch may hand out."""
        mask = Sched.UPDATE
        if self._c["scheduler.envelope.inflight"] < self.max_inflight:
            mask |= Sched.EXPIRE | Sched.REMOVE | Sched.BOUNCE | Sched.DELAY
            if EnvelopeType.MDA not in self.paused:
                mask |= Sched.MDA
            if EnvelopeType.MTA not in self.paused:
                mask |= Sched.MTA
        return mask

    def batch(self, now: int) -> Batch:
        """The next batch of work; SCHEDULE/REMOVE/EXPIRE envelopes are in flight
        until delivery_*() (SCHEDULE) or ack() (REMOVE, EXPIRE)."""
        room = self.max_inflight - self._c["scheduler.envelope.inflight"]
        limit = max(1, min(self.max_schedule, room))
        b = self.backend.batch(self.mask(), now, limit)
        n = len(b.evpids)
        if b.kind in (BatchKind.REMOVE, BatchKind.EXPIRE):
            self._c["scheduler.envelope"] -= n
            self._c["scheduler.envelope.inflight"] += n
            key = "removed" if b.kind is BatchKind.REMOVE else "expired"
            self._c[f"scheduler.envelope.{key}"] += n
        elif b.kind is BatchKind.UPDATE:
            self._c["scheduler.envelope.updated"] += n
        elif b.kind is BatchKind.SCHEDULE:
            self._c["scheduler.envelope.inflight"] += n
        return b

    # -- smtpctl ----------------------------------------------------------------

    def schedule(self, target: int | None, now: int) -> int:
        return self.backend.schedule(target, now)

    def remove(self, target: int | None, now: int) -> int:
        return self.backend.remove(target, now)

    def suspend(self, target: int | None) -> int:
        return self.backend.suspend(target)

    def resume_envelopes(self, target: int | None, now: int) -> int:
        return self.backend.resume(target, now)

    def messages(self, from_msgid: int, n: int) -> list[int]:
        return self.backend.messages(from_msgid, n)

    def envelopes(self, from_evpid: int, n: int) -> list[EnvelopeState]:
        return self.backend.envelopes(from_evpid, n)

    @property
    def inflight(self) -> int:
        return self._c["scheduler.envelope.inflight"]

    def stats(self) -> dict[str, int]:
        """Every scheduler counter, front and backend, by upstream's names."""
        out = dict(self._c)
        out.update(self.backend.stats())
        return out
