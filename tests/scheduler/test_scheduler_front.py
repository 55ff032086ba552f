"""The Scheduler front: counters, in-flight limit, global pause state."""

from __future__ import annotations

import pytest

from smtpd.scheduler import (
    Batch,
    BatchKind,
    EnvelopeType,
    RamQueue,
    Sched,
    Scheduler,
    SchedulerError,
    SchedulerInfo,
)

T0 = 1_700_000_000
MDA, MTA, BOUNCE = EnvelopeType.MDA, EnvelopeType.MTA, EnvelopeType.BOUNCE

IDLE = {
    "scheduler.envelope": 0,
    "scheduler.envelope.incoming": 0,
    "scheduler.envelope.inflight": 0,
    "scheduler.ramqueue.envelope": 0,
    "scheduler.ramqueue.message": 0,
    "scheduler.ramqueue.update": 0,
    "scheduler.ramqueue.hold": 0,
    "scheduler.ramqueue.holdq": 0,
}


def info(evpid: int, kind: EnvelopeType = MDA, retry: int = 0, ttl: int = 86400) -> SchedulerInfo:
    return SchedulerInfo(evpid=evpid, type=kind, creation=T0, expire=ttl, retry=retry)


def load(s: Scheduler, msgid: int, n: int, kind: EnvelopeType = MDA, ttl: int = 86400) -> list[int]:
    ids = [(msgid << 32) | (i + 1) for i in range(n)]
    for e in ids:
        s.submit(info(e, kind, ttl=ttl))
    assert s.commit(msgid, T0) == n
    return ids


def subset(stats: dict[str, int], keys: dict[str, int]) -> dict[str, int]:
    return {k: stats[k] for k in keys}


def test_counters_return_to_idle_after_everything_is_done() -> None:
    s = Scheduler(warn_intervals=(3600,))
    assert subset(s.stats(), IDLE) == IDLE
    ok = load(s, 1, 3)
    tf = load(s, 2, 1, MTA)
    pf = load(s, 3, 1, BOUNCE)
    rb = [(4 << 32) | 1]
    s.submit(info(rb[0]))
    rm = load(s, 5, 2, MTA)
    ex = load(s, 6, 1, MTA, ttl=100)
    st = s.stats()
    assert st["scheduler.envelope"] == 8 and st["scheduler.envelope.incoming"] == 1
    assert st["scheduler.ramqueue.message"] == 6 and st["scheduler.ramqueue.update"] == 1
    assert s.rollback(4) == 1
    assert s.remove(5, T0) == 2
    now = T0
    seen: dict[BatchKind, list[int]] = {}
    loop = [ok[2]]
    retries: dict[int, int] = {}
    for _ in range(50):
        b = s.batch(now)
        if b.kind is BatchKind.NONE:
            if b.delay is None:
                break
            now += max(b.delay, 1)
            continue
        seen.setdefault(b.kind, []).extend(b.evpids)
        for e in b.evpids:
            if b.kind in (BatchKind.REMOVE, BatchKind.EXPIRE):
                s.ack(e)
            elif b.kind is BatchKind.SCHEDULE and e in loop:
                s.delivery_loop(e)
            elif b.kind is BatchKind.SCHEDULE and e in pf:
                s.delivery_permfail(e)
            elif b.kind is BatchKind.SCHEDULE and e in tf + ex and now < T0 + 3000:
                retries[e] = retries.get(e, 0) + 1
                s.delivery_tempfail(info(e, MTA, retry=retries[e]), now)
            elif b.kind is BatchKind.SCHEDULE:
                s.delivery_ok(e)
    assert sorted(seen[BatchKind.REMOVE]) == rm
    assert seen[BatchKind.EXPIRE] == ex
    st = s.stats()
    assert subset(st, IDLE) == IDLE, st
    assert st["scheduler.delivery.ok"] == 3  # ok[0], ok[1], tf after it stops failing
    assert st["scheduler.delivery.loop"] == 1
    assert st["scheduler.delivery.permfail"] == 1
    assert st["scheduler.delivery.tempfail"] >= 2
    assert st["scheduler.envelope.removed"] == 2
    assert st["scheduler.envelope.expired"] == 1


def test_pause_and_resume_of_mda_and_mta() -> None:
    s = Scheduler()
    mda = load(s, 1, 1, MDA)
    mta = load(s, 2, 1, MTA)
    assert s.pause(MDA) and not s.pause(MDA)
    assert not s.mask() & Sched.MDA and s.mask() & Sched.MTA
    assert s.batch(T0) == Batch(BatchKind.SCHEDULE, tuple(mta), type=MTA)
    assert s.batch(T0).kind is BatchKind.NONE
    assert s.resume(MDA) and not s.resume(MDA)
    assert s.batch(T0) == Batch(BatchKind.SCHEDULE, tuple(mda), type=MDA)


def test_inflight_limit_stops_handing_out() -> None:
    s = Scheduler(max_inflight=2, max_schedule=10)
    ids = load(s, 1, 5)
    b = s.batch(T0)
    assert b.evpids == tuple(ids[:2])
    assert s.mask() == Sched.UPDATE
    assert s.batch(T0).kind is BatchKind.NONE
    s.delivery_ok(ids[0])
    assert s.batch(T0).evpids == (ids[2],)
    assert s.inflight == 2


def test_discover_skips_known_messages() -> None:
    s = Scheduler()
    (e,) = load(s, 1, 1)
    assert s.discover(info(e)) is False
    assert s.discover_commit(1, T0) == 0
    e2 = (2 << 32) | 1
    assert s.discover(info(e2)) is True
    assert s.discover_commit(2, T0) == 1
    assert s.stats()["scheduler.envelope"] == 2


def test_queue_remove_of_inflight_and_pending() -> None:
    s = Scheduler()
    a, b = load(s, 1, 2)
    s.suspend(b)
    assert s.batch(T0).evpids == (a,)
    s.queue_remove(a, True, T0)  # the queue could not load it
    s.queue_remove(b, False, T0)
    assert s.batch(T0) == Batch(BatchKind.REMOVE, (b,))
    s.ack(b)
    assert subset(s.stats(), IDLE) == IDLE
    with pytest.raises(SchedulerError):
        s.ack(b)


def test_hold_counts_and_delay_batches() -> None:
    s = Scheduler(backend=RamQueue(warn_intervals=(3600,)))
    (e,) = load(s, 1, 1, MTA)
    s.batch(T0)
    assert s.hold(e, 9) and s.inflight == 0
    assert s.release(MTA, 9, 0) == 1
    assert s.batch(T0).evpids == (e,)
    s.delivery_tempfail(info(e, MTA, retry=3), T0 + 1)
    assert s.batch(T0 + 1) == Batch(BatchKind.DELAY, (e,), warn_after=(3600,))
    assert s.inflight == 0
    with pytest.raises(SchedulerError):
        Scheduler(max_inflight=0)
