"""RamQueue against a naive model: dicts and linear scans, same semantics.

The model keeps one record per envelope and recomputes everything by
scanning; the state machine drives both with random messages, time steps,
batches under random masks and limits, delivery results and smtpctl
commands, and compares counts, batch contents and `show queue` listings.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from smtpd.scheduler import (
    BatchKind,
    EnvelopeFlag,
    EnvelopeType,
    RamQueue,
    Sched,
    SchedulerInfo,
)
from smtpd.scheduler.types import backoff, backoff_base, next_try

T0 = 1_700_000_000
WARN = (3000, 9000)
KIND_BIT = {
    EnvelopeType.MDA: Sched.MDA,
    EnvelopeType.MTA: Sched.MTA,
    EnvelopeType.BOUNCE: Sched.BOUNCE,
}


@dataclass
class Evp:
    type: EnvelopeType
    ctime: int
    expire: int
    sched: int
    retry: int
    lastbounce: int = 0
    state: str = "incoming"  # incoming, pending, scheduled, inflight
    suspended: bool = False
    removed: bool = False
    expired: bool = False
    warn: bool = False

    def key(self) -> int:
        return min(self.sched, self.expire)


class SchedulerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rq = RamQueue(warn_intervals=WARN)
        self.now = T0
        self.evps: dict[int, Evp] = {}
        self.next_msgid = 1

    # -- the model's own transitions ------------------------------------------

    def make_due(self, m: Evp) -> None:
        m.state = "scheduled"
        if m.expire <= self.now:
            m.expired = True

    def enqueue(self, m: Evp) -> None:
        m.state = "pending"
        if not m.suspended and m.key() <= self.now:
            self.make_due(m)

    def promote(self) -> None:
        for m in self.evps.values():
            if m.state == "pending" and not m.suspended and m.key() <= self.now:
                self.make_due(m)

    def eligible(self, bit: Sched) -> set[int]:
        out = set()
        for e, m in self.evps.items():
            if bit is Sched.DELAY:
                ok = m.warn and not (m.removed or m.expired)
            elif m.state != "scheduled":
                ok = False
            elif bit is Sched.REMOVE:
                ok = m.removed
            elif bit is Sched.EXPIRE:
                ok = m.expired and not m.removed
            elif bit is Sched.UPDATE:
                ok = False  # hold queues are not driven here
            else:
                ok = KIND_BIT[m.type] is bit and not (m.suspended or m.removed or m.expired)
            if ok:
                out.add(e)
        return out

    def targets(self, target: int | None) -> list[int]:
        committed = [e for e, m in self.evps.items() if m.state != "incoming"]
        if target is None:
            return committed
        if target > 0xFFFFFFFF:
            return [e for e in committed if e == target]
        return [e for e in committed if e >> 32 == target]

    def pick(self, data: st.DataObject, pred: str = "") -> int | None:
        pool = sorted(e for e, m in self.evps.items() if not pred or m.state == pred)
        return data.draw(st.sampled_from(pool)) if pool else None

    def target(self, data: st.DataObject) -> int | None:
        choices: list[int | None] = [None, 0xDEAD, (0xDEAD << 32) | 1]
        choices += sorted({e >> 32 for e in self.evps}) + sorted(self.evps)
        return data.draw(st.sampled_from(choices))

    # -- rules ------------------------------------------------------------------

    @rule(
        n=st.integers(1, 4),
        kind=st.sampled_from(EnvelopeType),
        retry=st.integers(0, 4),
        age=st.integers(-200, 3 * 86400),
        ttl=st.integers(1, 2 * 86400),
        commit=st.booleans(),
    )
    def new_message(
        self, n: int, kind: EnvelopeType, retry: int, age: int, ttl: int, commit: bool
    ) -> None:
        msgid = self.next_msgid
        self.next_msgid += 1
        creation = max(0, self.now - age)
        for i in range(n):
            e = (msgid << 32) | (i + 1)
            info = SchedulerInfo(evpid=e, type=kind, creation=creation, expire=ttl, retry=retry)
            sched = backoff(creation, backoff_base(kind), retry)
            assert self.rq.insert(info) == sched
            self.evps[e] = Evp(kind, creation, creation + ttl, sched, retry)
        mine = [e for e in self.evps if e >> 32 == msgid]
        if commit:
            assert self.rq.commit(msgid, self.now) == n
            for e in mine:
                self.enqueue(self.evps[e])
        else:
            assert self.rq.rollback(msgid) == n
            for e in mine:
                del self.evps[e]

    @rule(dt=st.one_of(st.integers(0, 20), st.integers(0, 20000)))
    def advance(self, dt: int) -> None:
        self.now += dt

    @rule(
        mask=st.integers(0, int(Sched.ALL)).map(Sched),
        limit=st.integers(1, 5),
    )
    def batch(self, mask: Sched, limit: int) -> None:
        b = self.rq.batch(mask, self.now, limit)
        self.promote()
        bits = [bit for bit in Sched if bit & mask and bit not in (Sched.NONE, Sched.ALL)]
        if b.kind is BatchKind.NONE:
            assert all(not self.eligible(bit) for bit in bits)
            waiting = [
                m.key() for m in self.evps.values() if m.state == "pending" and not m.suspended
            ]
            if waiting:
                assert b.delay is not None and self.now + b.delay <= min(waiting)
            return
        bit = {
            BatchKind.REMOVE: Sched.REMOVE,
            BatchKind.EXPIRE: Sched.EXPIRE,
            BatchKind.UPDATE: Sched.UPDATE,
            BatchKind.DELAY: Sched.DELAY,
        }.get(b.kind) or KIND_BIT[b.type]  # type: ignore[index]
        assert bit & mask
        ok = self.eligible(bit)
        assert len(set(b.evpids)) == len(b.evpids) == min(limit, len(ok))
        assert set(b.evpids) <= ok
        for i, e in enumerate(b.evpids):
            m = self.evps[e]
            if b.kind in (BatchKind.REMOVE, BatchKind.EXPIRE):
                del self.evps[e]
            elif b.kind is BatchKind.DELAY:
                m.warn = False
                assert b.warn_after[i] == m.lastbounce - m.ctime
            else:
                assert b.type is m.type
                m.state = "inflight"

    @rule(data=st.data(), outcome=st.sampled_from(["ok", "tempfail"]))
    def report(self, data: st.DataObject, outcome: str) -> None:
        e = self.pick(data, "inflight")
        if e is None:
            return
        m = self.evps[e]
        if outcome == "ok":
            self.rq.delete(e)
            del self.evps[e]
            return
        m.retry += 1
        info = SchedulerInfo(
            evpid=e, type=m.type, creation=m.ctime, expire=m.expire - m.ctime, retry=m.retry
        )
        got = self.rq.update(info, self.now)
        if m.removed:
            m.state = "scheduled"
            return
        m.sched = next_try(m.ctime, backoff_base(m.type), m.retry, self.now)
        assert got == m.sched
        for w in WARN:
            ts = m.ctime + w
            if ts >= m.expire:
                break
            if m.sched >= ts and m.lastbounce < ts:
                m.lastbounce = ts
                m.warn = True
                break
        self.enqueue(m)

    @rule(data=st.data())
    def schedule(self, data: st.DataObject) -> None:
        target = self.target(data)
        count = 0
        for e in self.targets(target):
            m = self.evps[e]
            if m.state == "inflight" or m.removed or m.expired or m.suspended:
                continue
            if m.state != "scheduled":
                self.make_due(m)
            count += 1
        assert self.rq.schedule(target, self.now) == count

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        target = self.target(data)
        count = 0
        for e in self.targets(target):
            m = self.evps[e]
            if m.removed or m.expired:
                continue
            count += 1
            m.removed = True
            if m.state != "inflight":
                m.state = "scheduled"
        assert self.rq.remove(target, self.now) == count

    @rule(data=st.data())
    def suspend(self, data: st.DataObject) -> None:
        target = self.target(data)
        count = 0
        for e in self.targets(target):
            m = self.evps[e]
            if m.suspended or m.removed or m.expired:
                continue
            m.suspended = True
            count += 1
        assert self.rq.suspend(target) == count

    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        target = self.target(data)
        count = 0
        for e in self.targets(target):
            m = self.evps[e]
            if not m.suspended:
                continue
            m.suspended = False
            count += 1
            if m.state == "pending" and not (m.removed or m.expired):
                self.enqueue(m)
        assert self.rq.resume(target, self.now) == count

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def same_envelopes(self) -> None:
        assert len(self.rq) == len(self.evps)
        stats = self.rq.stats()
        assert stats["scheduler.ramqueue.envelope"] == len(self.evps)
        committed = {e >> 32 for e, m in self.evps.items() if m.state != "incoming"}
        assert self.rq.messages(0, 10**6) == sorted(committed)

    @precondition(lambda self: bool(self.evps))
    @invariant()
    def same_listing(self) -> None:
        for msgid in {e >> 32 for e in self.evps}:
            listed = {s.evpid: s for s in self.rq.envelopes(msgid << 32, 10**6)}
            want = {
                e: m
                for e, m in self.evps.items()
                if e >> 32 == msgid and m.state != "incoming" and not (m.removed or m.expired)
            }
            assert set(listed) == set(want)
            for e, m in want.items():
                flags = listed[e].flags
                assert bool(flags & EnvelopeFlag.INFLIGHT) == (m.state == "inflight")
                assert bool(flags & EnvelopeFlag.SUSPEND) == m.suspended
                if m.state == "pending":
                    assert listed[e].time == m.sched


TestSchedulerModel = SchedulerModel.TestCase
TestSchedulerModel.settings = settings(
    max_examples=500, stateful_step_count=50, deadline=None, derandomize=True, database=None
)
