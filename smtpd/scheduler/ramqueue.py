"""The `ramqueue` scheduler backend: every envelope's schedule in memory.

Semantics follow OpenSMTPD's scheduler_ramqueue.c: envelopes are inserted
into a per-message "update" set and become schedulable on commit; each is
PENDING (waiting for its next try), SCHEDULED (due, in a ready list),
INFLIGHT (handed out by batch(), until the queue reports back) or HELD (in
a hold queue of the MTA).  Flags mark envelopes expired, removed,
suspended or to be rescheduled (update).  Where this differs from upstream
it says so.  Storage is in slots.py; all times are passed in (`now`,
integer seconds): nothing reads a clock.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence
from typing import Final

from .slots import (
    EXPIRED,
    GONE,
    HELD,
    INFLIGHT,
    NOT_READY,
    OVERFLOW,
    PENDING,
    REMOVED,
    SCHEDULED,
    SUSPEND,
    UPDATE,
    WARN,
    EnvelopeSlots,
)
from .types import (
    BACKOFF_OVERFLOW,
    MAX_BOUNCE_WARN,
    MSGID_MAX,
    Batch,
    BatchKind,
    EnvelopeFlag,
    EnvelopeState,
    EnvelopeType,
    Sched,
    SchedulerError,
    SchedulerInfo,
    backoff_base,
    clamp_time,
    next_try,
)

HOLDQ_MAXSIZE: Final = 1000  # upstream: a full hold queue "tempfails" the envelope


# batch() kinds in the round-robin order upstream's loop visits them
_ORDER: Final[tuple[tuple[Sched, BatchKind, EnvelopeType | None], ...]] = (
    (Sched.REMOVE, BatchKind.REMOVE, None),
    (Sched.EXPIRE, BatchKind.EXPIRE, None),
    (Sched.UPDATE, BatchKind.UPDATE, None),
    (Sched.DELAY, BatchKind.DELAY, None),
    (Sched.BOUNCE, BatchKind.SCHEDULE, EnvelopeType.BOUNCE),
    (Sched.MDA, BatchKind.SCHEDULE, EnvelopeType.MDA),
    (Sched.MTA, BatchKind.SCHEDULE, EnvelopeType.MTA),
)


class RamQueue(EnvelopeSlots):
    """The in-memory scheduler backend (see the module docstring)."""

    name: Final = "ramqueue"

    def __init__(self, warn_intervals: Sequence[int] = ()) -> None:
        super().__init__()
        warn = tuple(sorted(set(warn_intervals)))
        if len(warn) > MAX_BOUNCE_WARN or any(w <= 0 for w in warn):
            raise SchedulerError(f"bad bounce warn-interval list {warn_intervals!r}")
        self._warn = warn
        self._holdqs: dict[tuple[int, int], list[int]] = {}
        self._held_in: dict[int, int] = {}  # slot -> holdq id
        self._rr = 0
        self._msg_sorted: array[int] | None = None
        self._hold_overflow = 0

    # -- the backend interface ---------------------------------------------

    def insert(self, info: SchedulerInfo) -> int:
        """Add an envelope of a message not committed yet; returns its next try."""
        if info.evpid in self._evpmap:
            raise SchedulerError(f"evp:{info.evpid:016x} already in the scheduler")
        slot = self._alloc(info)
        self._incoming.setdefault(info.evpid >> 32, []).append(slot)
        return self._sched[slot]

    def commit(self, msgid: int, now: int) -> int:
        """Make the inserted envelopes of `msgid` schedulable; returns how many."""
        slots = self._incoming.pop(msgid, None)
        if slots is None:
            raise SchedulerError(f"msg:{msgid:08x} has no envelope to commit")
        slots.sort(key=self._evpid.__getitem__, reverse=True)
        for slot in slots:  # linked at the head: reversed insert keeps evpid order
            self._link(slot)
        for slot in reversed(slots):
            self._enqueue_pending(slot, now)
        return len(slots)

    def rollback(self, msgid: int) -> int:
        """Forget the inserted, uncommitted envelopes of `msgid`."""
        slots = self._incoming.pop(msgid, [])
        for slot in slots:
            self._release_slot(slot)
        return len(slots)

    def _inflight_slot(self, evpid: int, what: str) -> int:
        slot = self._evpmap.get(evpid)
        if slot == -1 or self._state[slot] != INFLIGHT:
            raise SchedulerError(f"{what}: evp:{evpid:016x} is not in flight")
        return slot

    def update(self, info: SchedulerInfo, now: int) -> int:
        """An in-flight envelope tempfailed; returns its next try.

        `info.retry` is the number of failed tries including this one.  If a
        `bounce warn-interval` falls before the next try and was not warned
        about yet (upstream: scheduler.c, IMSG_QUEUE_DELIVERY_TEMPFAIL), a
        delay warning is queued for batch().
        """
        slot = self._inflight_slot(info.evpid, "update")
        flags = self._flags[slot]
        if flags & REMOVED:  # removed while in flight: remove it now
            self._state[slot] = SCHEDULED
            self._tstate[slot] = now
            self._fifo[Sched.REMOVE].append(slot)
            return now
        ctime = self._ctime[slot]
        base = backoff_base(EnvelopeType(self._type[slot]))
        sched = clamp_time(next_try(ctime, base, info.retry, now))
        self._sched[slot] = sched
        lastbounce = max(self._lastbounce[slot], clamp_time(info.lastbounce))
        self._lastbounce[slot] = lastbounce
        for warn in self._warn:
            ts = ctime + warn
            if ts >= self._expire[slot]:
                # Not upstream: it would announce a delay for an envelope
                # that expires (and bounces as failed) before the warn point.
                break
            if sched >= ts and lastbounce < ts:
                self._lastbounce[slot] = clamp_time(ts)
                if not flags & WARN:
                    self._flags[slot] = flags | WARN
                    self._fifo[Sched.DELAY].append(slot)
                break
        self._enqueue_pending(slot, now)
        return sched

    def delete(self, evpid: int) -> None:
        """An in-flight envelope is done (delivered or failed for good)."""
        self._release_slot(self._inflight_slot(evpid, "delete"))

    def hold(self, evpid: int, holdq: int) -> bool:
        """Park an in-flight envelope on a hold queue until release()."""
        slot = self._inflight_slot(evpid, "hold")
        flags = self._flags[slot]
        if flags & REMOVED:
            self._state[slot] = SCHEDULED
            self._fifo[Sched.REMOVE].append(slot)
            return False
        if flags & SUSPEND:
            self._state[slot] = PENDING
            return False
        q = self._holdqs.setdefault((self._type[slot], holdq), [])
        if len(q) >= HOLDQ_MAXSIZE:
            self._flags[slot] = flags | UPDATE | OVERFLOW
            self._hold_overflow += 1
            self._enqueue_pending(slot, None)
            return False
        self._state[slot] = HELD
        q.append(slot)
        self._held_in[slot] = holdq
        return True

    def _unhold(self, slot: int) -> None:
        holdq = self._held_in.pop(slot)
        qkey = (self._type[slot], holdq)
        q = self._holdqs[qkey]
        q.remove(slot)
        if not q:
            del self._holdqs[qkey]

    def release(self, kind: EnvelopeType, holdq: int, n: int) -> int:
        """Put up to `n` held envelopes back (0: all; -1: all, rescheduled later)."""
        q = self._holdqs.get((int(kind), holdq))
        if q is None:
            return 0
        count = len(q) if n <= 0 else min(n, len(q))
        taken, rest = q[:count], q[count:]
        if rest:
            self._holdqs[(int(kind), holdq)] = rest
        else:
            del self._holdqs[(int(kind), holdq)]
        for slot in taken:
            del self._held_in[slot]
            if n == -1:
                self._flags[slot] |= UPDATE
            self._enqueue_pending(slot, None)
        return count

    def batch(self, mask: Sched, now: int, limit: int) -> Batch:
        """Up to `limit` envelopes of one kind (and type) allowed by `mask`.

        Kinds take turns (round robin) so that a busy kind cannot starve the
        others.  Envelopes of one message come out adjacent.
        """
        if limit <= 0:
            raise SchedulerError(f"bad batch limit {limit}")
        self._promote(now)
        for i in range(len(_ORDER)):
            idx = (self._rr + i) % len(_ORDER)
            bit, kind, etype = _ORDER[idx]
            if not mask & bit:
                continue
            got = self._take(bit, now, limit)
            if got:
                self._rr = idx + 1
                if kind is BatchKind.DELAY:
                    return Batch(
                        kind,
                        tuple(e for e, _ in got),
                        warn_after=tuple(w for _, w in got),
                    )
                return Batch(kind, _group(got), type=etype)
        return Batch(BatchKind.NONE, delay=self._next_delay(now))

    def _take(self, bit: Sched, now: int, limit: int) -> list[tuple[int, int]]:
        fifo = self._fifo[bit]
        state, flags, evpid, etype = self._state, self._flags, self._evpid, self._type
        got: list[tuple[int, int]] = []
        while fifo and len(got) < limit:
            s = fifo.popleft()
            f = flags[s]
            if bit is Sched.DELAY:
                if f & WARN and not f & GONE:
                    flags[s] = f & ~WARN
                    got.append((evpid[s], self._lastbounce[s] - self._ctime[s]))
                continue
            if state[s] != SCHEDULED:
                continue
            if bit is Sched.REMOVE or bit is Sched.EXPIRE:
                want = REMOVED if bit is Sched.REMOVE else EXPIRED
                if f & want:
                    got.append((evpid[s], 0))
                    self._release_slot(s)
            elif bit is Sched.UPDATE:
                if f & UPDATE and not f & (GONE | SUSPEND):
                    got.append((evpid[s], 0))
                    base = (
                        BACKOFF_OVERFLOW if f & OVERFLOW else backoff_base(EnvelopeType(etype[s]))
                    )
                    self._sched[s] = clamp_time(next_try(self._ctime[s], base, 0, now))
                    flags[s] = f & ~(UPDATE | OVERFLOW)
                    self._enqueue_pending(s, now)
            elif not f & NOT_READY and self._ready_list(s, f) is bit:
                state[s] = INFLIGHT
                self._tstate[s] = now
                got.append((evpid[s], self._dest[s]))
        return got

    def messages(self, from_msgid: int, n: int) -> list[int]:
        """Up to `n` committed msgids >= from_msgid, ascending (show queue).

        Listing pages through a sorted snapshot taken when a listing starts
        (from_msgid 0) so that paging a million messages stays linear;
        messages gone since are skipped, new ones show in the next listing.
        """
        if self._msg_sorted is None or (self._msg_dirty and from_msgid == 0):
            self._msg_sorted = array("I", sorted(self._msgmap.keys()))
            self._msg_dirty = False
        snap = self._msg_sorted
        out: list[int] = []
        i = bisect.bisect_left(snap, from_msgid)
        while i < len(snap) and len(out) < n:
            if snap[i] in self._msgmap:
                out.append(snap[i])
            i += 1
        return out

    def envelopes(self, from_evpid: int, n: int) -> list[EnvelopeState]:
        """Up to `n` envelopes of from_evpid's message with evpid >= from_evpid."""
        slots = [
            s
            for s in self._message_slots(from_evpid >> 32)
            if self._evpid[s] >= from_evpid and not self._flags[s] & GONE
        ]
        slots.sort(key=self._evpid.__getitem__)
        out = []
        for s in slots[:n]:
            st, f = self._state[s], self._flags[s]
            flags = EnvelopeFlag.INFLIGHT if st == INFLIGHT else EnvelopeFlag.PENDING
            if st == HELD:
                flags |= EnvelopeFlag.HOLD
            if f & SUSPEND:
                flags |= EnvelopeFlag.SUSPEND
            when = self._sched[s] if st == PENDING else self._tstate[s]
            out.append(EnvelopeState(self._evpid[s], flags, when))
        return out

    def schedule(self, target: int | None, now: int) -> int:
        """Make envelopes due now (not in-flight, suspended or removed ones)."""
        count = 0
        for s in self._targets(target):
            st, f = self._state[s], self._flags[s]
            if st == INFLIGHT or f & (GONE | SUSPEND):
                continue
            if st == HELD:
                self._unhold(s)
            if st != SCHEDULED:
                self._make_due(s, now)
            count += 1
        return count

    def remove(self, target: int | None, now: int) -> int:
        """Mark envelopes removed; batch() hands them out as REMOVE.

        In-flight envelopes are only marked: they are removed when the queue
        reports them back (update, hold) instead of being retried.
        """
        count = 0
        for s in self._targets(target):
            st, f = self._state[s], self._flags[s]
            if f & GONE:
                continue
            count += 1
            self._flags[s] = f | REMOVED
            if st == INFLIGHT:
                continue
            if st == HELD:
                self._unhold(s)
            self._state[s] = SCHEDULED
            self._tstate[s] = now
            self._fifo[Sched.REMOVE].append(s)
        return count

    def suspend(self, target: int | None) -> int:
        """Never schedule these envelopes until resume()."""
        count = 0
        for s in self._targets(target):
            f = self._flags[s]
            if f & (SUSPEND | GONE):
                continue
            if self._state[s] == HELD:
                self._unhold(s)
                self._state[s] = PENDING
            self._flags[s] = f | SUSPEND
            count += 1
        return count

    def resume(self, target: int | None, now: int) -> int:
        """Undo suspend(); due envelopes become schedulable at once."""
        count = 0
        for s in self._targets(target):
            f = self._flags[s]
            if not f & SUSPEND:
                continue
            f &= ~SUSPEND
            self._flags[s] = f
            count += 1
            st = self._state[s]
            if f & GONE or st == INFLIGHT:
                continue
            if st == PENDING:
                self._enqueue_pending(s, now)
            else:
                self._fifo[self._ready_list(s, f)].append(s)
        return count

    def query(self, ident: int) -> bool:
        """Is this msgid (or the message of this evpid) committed here?"""
        return (ident >> 32 if ident > MSGID_MAX else ident) in self._msgmap

    def has_envelope(self, evpid: int) -> bool:
        """Is this very envelope here (incoming or committed)?"""
        return evpid in self._evpmap

    def __len__(self) -> int:
        return len(self._evpmap)

    def stats(self) -> dict[str, int]:
        messages = len(self._msgmap) + sum(1 for m in self._incoming if m not in self._msgmap)
        return {
            "scheduler.ramqueue.envelope": len(self._evpmap),
            "scheduler.ramqueue.message": messages,
            "scheduler.ramqueue.update": len(self._incoming),
            "scheduler.ramqueue.hold": len(self._held_in),
            "scheduler.ramqueue.holdq": len(self._holdqs),
            "scheduler.ramqueue.hold-overflow": self._hold_overflow,
        }


def _group(got: list[tuple[int, int]]) -> tuple[int, ...]:
    """Envelopes of one message adjacent, and within it those of one destination;
    messages and destinations keep the order they were first seen in."""
    groups: dict[int, dict[int, list[int]]] = {}
    for evpid, dest in got:
        groups.setdefault(evpid >> 32, {}).setdefault(dest, []).append(evpid)
    return tuple(e for by_dest in groups.values() for group in by_dest.values() for e in group)
