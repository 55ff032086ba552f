"""The `ramqueue` scheduler backend: every envelope's schedule in memory.

Semantics follow OpenSMTPD's scheduler_ramqueue.c: envelopes are inserted
into a per-message "update" set and become schedulable on commit; each is
PENDING (waiting for its next try), SCHEDULED (due, in a ready list),
INFLIGHT (handed out by batch(), until the queue reports back) or HELD (in
a hold queue of the MTA).  Flags mark envelopes expired, removed,
suspended or to be rescheduled (update).

Representation (built for millions of envelopes, see bench/scheduler_bench.py):
per-envelope state lives in parallel `array` columns indexed by a slot
number; `IntMap`s find a slot by evpid and the first slot of a message by
msgid; a message's envelopes form a doubly linked list through two columns.
Pending envelopes sit in time buckets of BUCKET_SECONDS (a dict of slot
arrays plus a heap of bucket numbers); due envelopes move to FIFOs of slots.
Buckets and FIFOs are never searched for removals: an entry is checked
against the slot's state when it is consumed and dropped if stale.  Every
consumption moves the envelope out of the state that made the entry valid,
so a stale duplicate can never hand an envelope out twice.

All times are passed in (`now`, integer seconds): nothing reads a clock.
"""

from __future__ import annotations

import bisect
import enum
import heapq
from array import array
from collections.abc import Iterator, Sequence
from typing import Final

from .columns import IntMap, SlotFifo
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
    backoff,
    backoff_base,
    clamp_time,
    next_try,
)

BUCKET_SECONDS: Final = 16
HOLDQ_MAXSIZE: Final = 1000  # upstream: a full hold queue "tempfails" the envelope
NIL: Final = 0xFFFFFFFF


class _St(enum.IntEnum):
    FREE = 0
    INCOMING = 1
    PENDING = 2
    SCHEDULED = 3
    INFLIGHT = 4
    HELD = 5


class _F(enum.IntFlag):
    EXPIRED = 0x01
    REMOVED = 0x02
    SUSPEND = 0x04
    UPDATE = 0x08
    OVERFLOW = 0x10
    WARN = 0x20  # a delay warning is waiting in the warn FIFO


# plain ints for the hot paths (enum attribute access is slow in loops)
_FREE, _INCOMING, _PENDING, _SCHEDULED, _INFLIGHT, _HELD = (int(s) for s in _St)
_EXPIRED, _REMOVED, _SUSPEND, _UPDATE, _OVERFLOW, _WARN = (int(f) for f in _F)
_GONE = _EXPIRED | _REMOVED
_NOT_READY = _GONE | _UPDATE | _SUSPEND

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


class RamQueue:
    """The in-memory scheduler backend (see the module docstring)."""

    name: Final = "ramqueue"

    def __init__(self, warn_intervals: Sequence[int] = ()) -> None:
        warn = tuple(sorted(set(warn_intervals)))
        if len(warn) > MAX_BOUNCE_WARN or any(w <= 0 for w in warn):
            raise SchedulerError(f"bad bounce warn-interval list {warn_intervals!r}")
        self._warn = warn
        # per-envelope columns, indexed by slot
        self._evpid = array("Q")
        self._ctime = array("I")
        self._expire = array("I")  # absolute: creation + ttl
        self._sched = array("I")  # next try (meaningful while PENDING)
        self._lastbounce = array("I")
        self._tstate = array("I")  # when it became SCHEDULED / INFLIGHT
        self._state = array("B")
        self._flags = array("B")
        self._type = array("B")
        self._next = array("I")  # message list links
        self._prev = array("I")
        self._free = array("I")
        self._evpmap = IntMap()  # evpid -> slot, every live envelope
        self._msgmap = IntMap()  # msgid -> first slot, committed messages
        self._incoming: dict[int, list[int]] = {}  # msgid -> slots not committed
        self._buckets: dict[int, array[int]] = {}
        self._bucket_heap: list[int] = []
        self._hint: tuple[int, int] | None = None  # (bucket, earliest key) after a scan
        self._fifo: dict[Sched, SlotFifo] = {
            kind: SlotFifo() for kind in Sched if kind not in (Sched.NONE, Sched.ALL)
        }
        self._holdqs: dict[tuple[int, int], list[int]] = {}
        self._held_in: dict[int, int] = {}  # slot -> holdq id
        self._rr = 0
        self._msg_sorted: array[int] | None = None
        self._msg_dirty = True
        self._hold_overflow = 0

    # -- slots ---------------------------------------------------------------

    def _alloc(self, info: SchedulerInfo) -> int:
        sched = clamp_time(backoff(info.creation, backoff_base(info.type), info.retry))
        row = (
            info.evpid,
            clamp_time(info.creation),
            clamp_time(info.creation + info.expire),
            sched,
            clamp_time(info.lastbounce),
            0,
            _INCOMING,
            0,
            int(info.type),
            NIL,
            NIL,
        )
        cols = self._columns()
        if self._free:
            slot = self._free.pop()
            for col, value in zip(cols, row, strict=True):
                col[slot] = value
        else:
            slot = len(self._evpid)
            if slot >= NIL:
                raise SchedulerError("scheduler full")
            for col, value in zip(cols, row, strict=True):
                col.append(value)
        self._evpmap.set(info.evpid, slot)
        return slot

    def _columns(self) -> tuple[array[int], ...]:
        return (
            self._evpid,
            self._ctime,
            self._expire,
            self._sched,
            self._lastbounce,
            self._tstate,
            self._state,
            self._flags,
            self._type,
            self._next,
            self._prev,
        )

    def _release_slot(self, slot: int) -> None:
        """Forget an envelope entirely (delivered, bounced, removed)."""
        if self._state[slot] != _INCOMING:
            self._unlink(slot)
        self._evpmap.pop(self._evpid[slot])
        self._state[slot] = _FREE
        self._flags[slot] = 0
        self._free.append(slot)

    def _link(self, slot: int) -> None:
        msgid = self._evpid[slot] >> 32
        head = self._msgmap.get(msgid)
        if head == -1:
            self._msg_dirty = True
            head = NIL
        else:
            self._prev[head] = slot
        self._next[slot] = head
        self._prev[slot] = NIL
        self._msgmap.set(msgid, slot)

    def _unlink(self, slot: int) -> None:
        nxt, prv = self._next[slot], self._prev[slot]
        if prv != NIL:
            self._next[prv] = nxt
        else:
            msgid = self._evpid[slot] >> 32
            if nxt == NIL:
                self._msgmap.pop(msgid)
                self._msg_dirty = True
            else:
                self._msgmap.set(msgid, nxt)
        if nxt != NIL:
            self._prev[nxt] = prv

    def _message_slots(self, msgid: int) -> list[int]:
        slots = []
        s = self._msgmap.get(msgid)
        nxt = self._next
        while s != -1 and s != NIL:
            slots.append(s)
            s = nxt[s]
        return slots

    def _targets(self, target: int | None) -> Iterator[int]:
        """Committed slots named by an evpid, a msgid or None (all)."""
        if target is None:
            for msgid in list(self._msgmap.keys()):
                yield from self._message_slots(msgid)
        elif target > MSGID_MAX:
            slot = self._evpmap.get(target)
            if slot != -1 and self._state[slot] != _INCOMING:
                yield slot
        elif target > 0:
            yield from self._message_slots(target)

    # -- pending buckets and ready FIFOs ---------------------------------------

    def _key(self, slot: int) -> int:
        s, e = self._sched[slot], self._expire[slot]
        return s if s < e else e

    def _enqueue_pending(self, slot: int, now: int | None) -> None:
        self._state[slot] = _PENDING
        if self._flags[slot] & _SUSPEND:
            return
        key = self._key(slot)
        if now is not None and key <= now:
            self._make_due(slot, now)
            return
        b = key // BUCKET_SECONDS
        arr = self._buckets.get(b)
        if arr is None:
            self._buckets[b] = array("I", (slot,))
            heapq.heappush(self._bucket_heap, b)
        else:
            arr.append(slot)
        if self._hint is not None and self._hint[0] == b:
            self._hint = None

    def _make_due(self, slot: int, now: int) -> None:
        """PENDING (or HELD) -> SCHEDULED in the FIFO batch() takes it from."""
        self._state[slot] = _SCHEDULED
        self._tstate[slot] = now
        flags = self._flags[slot]
        if self._expire[slot] <= now:
            self._flags[slot] = flags | _EXPIRED
            self._fifo[Sched.EXPIRE].append(slot)
        else:
            self._fifo[self._ready_list(slot, flags)].append(slot)

    def _ready_list(self, slot: int, flags: int) -> Sched:
        if flags & _UPDATE:
            return Sched.UPDATE
        kind = self._type[slot]
        if kind == EnvelopeType.MTA:
            return Sched.MTA
        if kind == EnvelopeType.MDA:
            return Sched.MDA
        return Sched.BOUNCE

    def _promote(self, now: int) -> None:
        """Move every pending envelope due at `now` to its ready FIFO."""
        heap, buckets = self._bucket_heap, self._buckets
        state, flags, evpid = self._state, self._flags, self._evpid
        while heap and heap[0] * BUCKET_SECONDS <= now:
            b = heapq.heappop(heap)
            arr = buckets.pop(b)
            key = self._key
            valid = [
                s
                for s in dict.fromkeys(arr)
                if state[s] == _PENDING
                and not flags[s] & _SUSPEND
                and key(s) // BUCKET_SECONDS == b
            ]
            due = [s for s in valid if key(s) <= now]
            due.sort(key=lambda s: (key(s), evpid[s]))
            for s in due:
                self._make_due(s, now)
            if len(due) != len(valid):
                rest = [s for s in valid if key(s) > now]
                buckets[b] = array("I", rest)
                heapq.heappush(heap, b)
                self._hint = (b, min(key(s) for s in rest))
                break  # rest is in the future, so is every later bucket

    def _next_delay(self, now: int) -> int | None:
        if not self._bucket_heap:
            return None
        b = self._bucket_heap[0]
        t = b * BUCKET_SECONDS
        if self._hint is not None and self._hint[0] == b:
            t = max(t, self._hint[1])
        return max(0, t - now)

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
        if slot == -1 or self._state[slot] != _INFLIGHT:
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
        if flags & _REMOVED:  # removed while in flight: remove it now
            self._state[slot] = _SCHEDULED
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
            if sched >= ts and lastbounce < ts:
                self._lastbounce[slot] = clamp_time(ts)
                if not flags & _WARN:
                    self._flags[slot] = flags | _WARN
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
        if flags & _REMOVED:
            self._state[slot] = _SCHEDULED
            self._fifo[Sched.REMOVE].append(slot)
            return False
        if flags & _SUSPEND:
            self._state[slot] = _PENDING
            return False
        q = self._holdqs.setdefault((self._type[slot], holdq), [])
        if len(q) >= HOLDQ_MAXSIZE:
            self._flags[slot] = flags | _UPDATE | _OVERFLOW
            self._hold_overflow += 1
            self._enqueue_pending(slot, None)
            return False
        self._state[slot] = _HELD
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
                self._flags[slot] |= _UPDATE
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
                return Batch(kind, _group_by_message(e for e, _ in got), type=etype)
        return Batch(BatchKind.NONE, delay=self._next_delay(now))

    def _take(self, bit: Sched, now: int, limit: int) -> list[tuple[int, int]]:
        fifo = self._fifo[bit]
        state, flags, evpid, etype = self._state, self._flags, self._evpid, self._type
        got: list[tuple[int, int]] = []
        while fifo and len(got) < limit:
            s = fifo.popleft()
            f = flags[s]
            if bit is Sched.DELAY:
                if f & _WARN and not f & _GONE:
                    flags[s] = f & ~_WARN
                    got.append((evpid[s], self._lastbounce[s] - self._ctime[s]))
                continue
            if state[s] != _SCHEDULED:
                continue
            if bit is Sched.REMOVE or bit is Sched.EXPIRE:
                want = _REMOVED if bit is Sched.REMOVE else _EXPIRED
                if f & want:
                    got.append((evpid[s], 0))
                    self._release_slot(s)
            elif bit is Sched.UPDATE:
                if f & _UPDATE and not f & (_GONE | _SUSPEND):
                    got.append((evpid[s], 0))
                    base = (
                        BACKOFF_OVERFLOW if f & _OVERFLOW else backoff_base(EnvelopeType(etype[s]))
                    )
                    self._sched[s] = clamp_time(next_try(self._ctime[s], base, 0, now))
                    flags[s] = f & ~(_UPDATE | _OVERFLOW)
                    self._enqueue_pending(s, now)
            elif not f & _NOT_READY and self._ready_list(s, f) is bit:
                state[s] = _INFLIGHT
                self._tstate[s] = now
                got.append((evpid[s], 0))
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
            if self._evpid[s] >= from_evpid and not self._flags[s] & _GONE
        ]
        slots.sort(key=self._evpid.__getitem__)
        out = []
        for s in slots[:n]:
            st, f = self._state[s], self._flags[s]
            flags = EnvelopeFlag.INFLIGHT if st == _INFLIGHT else EnvelopeFlag.PENDING
            if st == _HELD:
                flags |= EnvelopeFlag.HOLD
            if f & _SUSPEND:
                flags |= EnvelopeFlag.SUSPEND
            when = self._sched[s] if st == _PENDING else self._tstate[s]
            out.append(EnvelopeState(self._evpid[s], flags, when))
        return out

    def schedule(self, target: int | None, now: int) -> int:
        """Make envelopes due now (not in-flight, suspended or removed ones)."""
        count = 0
        for s in self._targets(target):
            st, f = self._state[s], self._flags[s]
            if st == _INFLIGHT or f & (_GONE | _SUSPEND):
                continue
            if st == _HELD:
                self._unhold(s)
            if st != _SCHEDULED:
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
            if f & _GONE:
                continue
            count += 1
            self._flags[s] = f | _REMOVED
            if st == _INFLIGHT:
                continue
            if st == _HELD:
                self._unhold(s)
            self._state[s] = _SCHEDULED
            self._tstate[s] = now
            self._fifo[Sched.REMOVE].append(s)
        return count

    def suspend(self, target: int | None) -> int:
        """Never schedule these envelopes until resume()."""
        count = 0
        for s in self._targets(target):
            f = self._flags[s]
            if f & (_SUSPEND | _GONE):
                continue
            if self._state[s] == _HELD:
                self._unhold(s)
                self._state[s] = _PENDING
            self._flags[s] = f | _SUSPEND
            count += 1
        return count

    def resume(self, target: int | None, now: int) -> int:
        """Undo suspend(); due envelopes become schedulable at once."""
        count = 0
        for s in self._targets(target):
            f = self._flags[s]
            if not f & _SUSPEND:
                continue
            f &= ~_SUSPEND
            self._flags[s] = f
            count += 1
            st = self._state[s]
            if f & _GONE or st == _INFLIGHT:
                continue
            if st == _PENDING:
                self._enqueue_pending(s, now)
            else:
                self._fifo[self._ready_list(s, f)].append(s)
        return count

    def query(self, ident: int) -> bool:
        """Is this msgid (or the message of this evpid) committed here?"""
        return (ident >> 32 if ident > MSGID_MAX else ident) in self._msgmap

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


def _group_by_message(evpids: Iterator[int]) -> tuple[int, ...]:
    """Keep first-seen order of messages, envelopes of one message adjacent."""
    groups: dict[int, list[int]] = {}
    for e in evpids:
        groups.setdefault(e >> 32, []).append(e)
    return tuple(e for group in groups.values() for e in group)
