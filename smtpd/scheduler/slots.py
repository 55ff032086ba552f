"""Where the ramqueue keeps envelopes: packed columns, not objects.

Per-envelope state lives in parallel `array` columns indexed by a slot
number (about 40 bytes per envelope); `IntMap`s find a slot by evpid and
the first slot of a message by msgid; a message's envelopes form a doubly
linked list through two columns.  Pending envelopes sit in time buckets of
BUCKET_SECONDS (a dict of slot arrays plus a heap of bucket numbers); due
envelopes move to FIFOs of slots, one per kind of batch.

Buckets and FIFOs are never searched for removals: an entry is checked
against the slot's state when it is consumed and dropped if stale.  Every
consumption moves the envelope out of the state that made the entry valid
(and a FIFO entry must match the list its slot would be put in now), so a
stale duplicate or a reused slot can never hand an envelope out twice or
as the wrong kind.
"""

from __future__ import annotations

import enum
import heapq
import zlib
from array import array
from collections.abc import Iterator
from typing import Final

from .columns import IntMap, SlotFifo
from .types import (
    MSGID_MAX,
    EnvelopeType,
    Sched,
    SchedulerError,
    SchedulerInfo,
    backoff,
    backoff_base,
    clamp_time,
)

BUCKET_SECONDS: Final = 16
PROMOTE_BUDGET: Final = 16384
NIL: Final = 0xFFFFFFFF


class St(enum.IntEnum):
    FREE = 0
    INCOMING = 1
    PENDING = 2
    SCHEDULED = 3
    INFLIGHT = 4
    HELD = 5


class F(enum.IntFlag):
    EXPIRED = 0x01
    REMOVED = 0x02
    SUSPEND = 0x04
    UPDATE = 0x08
    OVERFLOW = 0x10
    WARN = 0x20  # a delay warning is waiting in the warn FIFO


# plain ints for the hot paths (enum attribute access is slow in loops)
FREE, INCOMING, PENDING, SCHEDULED, INFLIGHT, HELD = (int(s) for s in St)
EXPIRED, REMOVED, SUSPEND, UPDATE, OVERFLOW, WARN = (int(f) for f in F)
GONE = EXPIRED | REMOVED
NOT_READY = GONE | UPDATE | SUSPEND


class EnvelopeSlots:
    """Per-envelope columns, message lists, time buckets and ready FIFOs."""

    def __init__(self) -> None:
        # per-envelope columns, indexed by slot
        self._evpid = array("Q")
        self._ctime = array("I")
        self._expire = array("I")  # absolute: creation + ttl
        self._sched = array("I")  # next try (meaningful while PENDING)
        self._lastbounce = array("I")
        self._dest = array("I")  # crc32 of the destination domain, 0 for none
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
        self._msg_dirty = True
        self._cols = (
            self._evpid,
            self._ctime,
            self._expire,
            self._sched,
            self._lastbounce,
            self._dest,
            self._tstate,
            self._state,
            self._flags,
            self._type,
            self._next,
            self._prev,
        )

    # -- slots ---------------------------------------------------------------

    def _alloc(self, info: SchedulerInfo) -> int:
        sched = clamp_time(backoff(info.creation, backoff_base(info.type), info.retry))
        row = (
            info.evpid,
            clamp_time(info.creation),
            clamp_time(info.creation + info.expire),
            sched,
            clamp_time(info.lastbounce),
            zlib.crc32(info.dest.lower().encode()) if info.dest else 0,
            0,
            INCOMING,
            0,
            int(info.type),
            NIL,
            NIL,
        )
        cols = self._cols
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

    def _release_slot(self, slot: int) -> None:
        """Forget an envelope entirely (delivered, bounced, removed)."""
        if self._state[slot] != INCOMING:
            self._unlink(slot)
        self._evpmap.pop(self._evpid[slot])
        self._state[slot] = FREE
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
            if slot != -1 and self._state[slot] != INCOMING:
                yield slot
        elif target > 0:
            yield from self._message_slots(target)

    # -- pending buckets and ready FIFOs ---------------------------------------

    def _key(self, slot: int) -> int:
        s, e = self._sched[slot], self._expire[slot]
        return s if s < e else e

    def _enqueue_pending(self, slot: int, now: int | None) -> None:
        self._state[slot] = PENDING
        if self._flags[slot] & SUSPEND:
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
        self._state[slot] = SCHEDULED
        self._tstate[slot] = now
        flags = self._flags[slot]
        if self._expire[slot] <= now:
            self._flags[slot] = flags | EXPIRED
            self._fifo[Sched.EXPIRE].append(slot)
        else:
            self._fifo[self._ready_list(slot, flags)].append(slot)

    def _ready_list(self, slot: int, flags: int) -> Sched:
        if flags & UPDATE:
            return Sched.UPDATE
        kind = self._type[slot]
        if kind == EnvelopeType.MTA:
            return Sched.MTA
        if kind == EnvelopeType.MDA:
            return Sched.MDA
        return Sched.BOUNCE

    def _promote(self, now: int) -> None:
        """Move pending envelopes due at `now` to their ready FIFOs.

        Whole buckets at a time, stopping after PROMOTE_BUDGET envelopes so
        that one call stays short after a long sleep or a restart (upstream
        caps this at SCHEDULEMAX); what is left is due at once next time.
        """
        heap, buckets = self._bucket_heap, self._buckets
        state, flags, evpid = self._state, self._flags, self._evpid
        promoted = 0
        while heap and heap[0] * BUCKET_SECONDS <= now and promoted < PROMOTE_BUDGET:
            b = heapq.heappop(heap)
            arr = buckets.pop(b)
            key = self._key
            valid = [
                s
                for s in dict.fromkeys(arr)
                if state[s] == PENDING and not flags[s] & SUSPEND and key(s) // BUCKET_SECONDS == b
            ]
            due = [s for s in valid if key(s) <= now]
            due.sort(key=lambda s: (key(s), evpid[s]))
            for s in due:
                self._make_due(s, now)
            promoted += len(due)
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
