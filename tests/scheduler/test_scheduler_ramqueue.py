"""RamQueue semantics, checked against scheduler_ramqueue.c's behaviour."""

from __future__ import annotations

import pytest

from smtpd.scheduler import (
    BACKENDS,
    Batch,
    BatchKind,
    EnvelopeFlag,
    EnvelopeType,
    RamQueue,
    Sched,
    SchedulerError,
    SchedulerInfo,
    open_backend,
)

T0 = 1_700_000_000
MDA, MTA, BOUNCE = EnvelopeType.MDA, EnvelopeType.MTA, EnvelopeType.BOUNCE
DAY = 86400


def evp(msgid: int, n: int) -> int:
    return (msgid << 32) | n


def info(
    evpid: int,
    kind: EnvelopeType = MDA,
    creation: int = T0,
    ttl: int = 4 * DAY,
    retry: int = 0,
    lastbounce: int = 0,
) -> SchedulerInfo:
    return SchedulerInfo(
        evpid=evpid, type=kind, creation=creation, expire=ttl, retry=retry, lastbounce=lastbounce
    )


def add(rq: RamQueue, msgid: int, n: int = 1, now: int = T0, **kw: int | EnvelopeType) -> list[int]:
    ids = [evp(msgid, i + 1) for i in range(n)]
    for e in ids:
        rq.insert(info(e, **kw))  # type: ignore[arg-type]
    assert rq.commit(msgid, now) == n
    return ids


def drain(rq: RamQueue, now: int, mask: Sched = Sched.ALL, limit: int = 1000) -> list[Batch]:
    out = []
    while (b := rq.batch(mask, now, limit)).kind is not BatchKind.NONE:
        out.append(b)
    return out


def handed(rq: RamQueue, now: int, mask: Sched = Sched.ALL) -> list[int]:
    return [e for b in drain(rq, now, mask) for e in b.evpids]


def test_registry_names_ramqueue() -> None:
    assert BACKENDS["ramqueue"] is RamQueue
    assert isinstance(open_backend("ramqueue", (3600,)), RamQueue)
    with pytest.raises(SchedulerError, match="cannot find scheduler backend"):
        open_backend("nope")


def test_nothing_schedulable_before_commit_and_rollback_forgets() -> None:
    rq = RamQueue()
    e = evp(7, 1)
    assert rq.insert(info(e)) == T0
    assert rq.batch(Sched.ALL, T0, 10).kind is BatchKind.NONE
    assert not rq.query(7)
    assert rq.stats()["scheduler.ramqueue.update"] == 1
    assert rq.rollback(7) == 1
    assert rq.rollback(7) == 0
    assert len(rq) == 0
    rq.insert(info(e))  # the evpid can come again
    with pytest.raises(SchedulerError):
        rq.insert(info(e))
    with pytest.raises(SchedulerError):
        rq.commit(8, T0)
    assert rq.commit(7, T0) == 1 and rq.query(7) and rq.query(e)


def test_ordering_by_due_time() -> None:
    rq = RamQueue()
    # creation times and retries give due times T0+30, +10, +400*4, +20
    add(rq, 1, creation=T0 + 30)
    add(rq, 2, creation=T0 + 10)
    add(rq, 3, kind=MTA, retry=2)
    add(rq, 4, creation=T0 + 20)
    order: list[tuple[int, int]] = []
    now = T0
    while len(order) < 4:
        b = rq.batch(Sched.ALL, now, 100)
        if b.kind is BatchKind.NONE:
            assert b.delay is not None
            now += max(b.delay, 1)
            continue
        assert b.kind is BatchKind.SCHEDULE
        order += [(now, e >> 32) for e in b.evpids]
    assert order == [(T0 + 10, 2), (T0 + 20, 4), (T0 + 30, 1), (T0 + 1600, 3)]


def test_never_handed_out_before_due_and_delay_is_exact_after_scan() -> None:
    rq = RamQueue()
    add(rq, 1, creation=T0 + 37)
    b = rq.batch(Sched.ALL, T0 + 36, 10)
    assert b.kind is BatchKind.NONE and b.delay is not None and 0 <= b.delay <= 1
    assert handed(rq, T0 + 36) == []
    assert handed(rq, T0 + 37) == [evp(1, 1)]
    assert rq.batch(Sched.ALL, T0 + 37, 10) == Batch(BatchKind.NONE, delay=None)


def test_batch_limit_one_type_and_messages_adjacent() -> None:
    rq = RamQueue()
    # interleave two messages' envelopes in time: message 1 due at T0 and T0+1
    for i in range(3):
        rq.insert(info(evp(1, i + 1), creation=T0 + (i % 2)))
        rq.insert(info(evp(2, i + 1), creation=T0 + (i % 2)))
    rq.insert(info(evp(3, 1), kind=MTA))
    rq.commit(1, T0)
    rq.commit(2, T0)
    rq.commit(3, T0)
    batches = drain(rq, T0 + 1, limit=4)
    for b in batches:
        assert b.kind is BatchKind.SCHEDULE and b.type is not None
        assert len(b.evpids) <= 4
        msgids = [e >> 32 for e in b.evpids]
        # a message's envelopes are adjacent
        assert msgids == sorted(msgids, key=msgids.index)
    by_type: dict[EnvelopeType | None, list[int]] = {b.type: [] for b in batches}
    for b in batches:
        by_type[b.type] += list(b.evpids)
    assert by_type[MTA] == [evp(3, 1)]
    assert sorted(by_type[MDA]) == sorted(evp(m, i) for m in (1, 2) for i in (1, 2, 3))
    with pytest.raises(SchedulerError):
        rq.batch(Sched.ALL, T0, 0)


@pytest.mark.parametrize(("kind", "base"), [(MTA, 400), (MDA, 10), (BOUNCE, 10)])
def test_retry_backoff_is_base_times_retry_squared_from_creation(
    kind: EnvelopeType, base: int
) -> None:
    rq = RamQueue()
    (e,) = add(rq, 1, kind=kind)
    now = T0
    for retry in range(1, 6):
        assert handed(rq, now) == [e]
        nexttry = rq.update(info(e, kind=kind, retry=retry), now)
        assert nexttry == T0 + base * retry * retry
        assert handed(rq, nexttry - 1) == []
        now = nexttry
    # an insert of a retried envelope (restart) uses the same schedule
    rq2 = RamQueue()
    assert rq2.insert(info(evp(2, 1), kind=kind, retry=3)) == T0 + base * 9


def test_late_report_skips_to_the_next_future_step() -> None:
    # upstream scheduler_next(): steps already in the past are skipped
    rq = RamQueue()
    (e,) = add(rq, 1, kind=MTA)
    assert handed(rq, T0) == [e]
    now = T0 + 400 * 100 + 5  # steps up to 10 (T0+40000) are past
    assert rq.update(info(e, kind=MTA, retry=1), now) == T0 + 400 * 11 * 11


def test_expiry_comes_out_as_expire_and_leaves() -> None:
    rq = RamQueue()
    (e,) = add(rq, 1, kind=MTA, ttl=1000)
    assert handed(rq, T0) == [e]
    # next try at T0+1600 is after the ttl: due at expiry instead
    assert rq.update(info(e, kind=MTA, ttl=1000, retry=2), T0 + 1) == T0 + 1600
    b = rq.batch(Sched.ALL, T0 + 999, 10)
    assert b.kind is BatchKind.NONE and b.delay is not None and b.delay <= 1
    assert drain(rq, T0 + 1000) == [Batch(BatchKind.EXPIRE, (e,))]
    assert len(rq) == 0 and not rq.query(1)


def test_loaded_envelope_already_expired_expires_at_commit_time() -> None:
    rq = RamQueue()
    add(rq, 1, creation=T0 - 5 * DAY, now=T0)
    assert drain(rq, T0, Sched.ALL & ~Sched.EXPIRE) == []
    assert [b.kind for b in drain(rq, T0)] == [BatchKind.EXPIRE]


def test_delay_warnings_each_interval_once() -> None:
    rq = RamQueue(warn_intervals=(7200, 3600))
    (e,) = add(rq, 1, kind=MTA)
    handed(rq, T0)

    def tempfail(retry: int, now: int, lastbounce: int = 0) -> list[Batch]:
        rq.update(info(e, kind=MTA, retry=retry, lastbounce=lastbounce), now)
        return drain(rq, now, Sched.DELAY)

    assert tempfail(1, T0) == []  # next try T0+400 is before the first warn point
    assert handed(rq, T0 + 400, Sched.MTA) == [e]
    # next try T0+3600 reaches the first warn point: one warning
    assert tempfail(3, T0 + 400) == [Batch(BatchKind.DELAY, (e,), warn_after=(3600,))]
    # the envelope stays queued (not in flight) and is tried again
    assert handed(rq, T0 + 3600, Sched.MTA) == [e]
    assert tempfail(3, T0 + 3600) == []  # next T0+6400: 3600 already warned
    assert handed(rq, T0 + 6400, Sched.MTA) == [e]
    assert tempfail(4, T0 + 6400) == [Batch(BatchKind.DELAY, (e,), warn_after=(7200,))]
    assert handed(rq, T0 + 10000, Sched.MTA) == [e]
    assert tempfail(5, T0 + 10000) == []


def test_delay_warning_respects_lastbounce_from_the_queue() -> None:
    rq = RamQueue(warn_intervals=(3600,))
    (e,) = add(rq, 1, kind=MTA)
    handed(rq, T0)
    rq.update(info(e, kind=MTA, retry=3, lastbounce=T0 + 3600), T0 + 10)
    assert drain(rq, T0 + 10, Sched.DELAY) == []


def test_no_delay_warning_when_the_envelope_expires_before_the_warn_point() -> None:
    rq = RamQueue(warn_intervals=(3600,))
    (e,) = add(rq, 1, kind=MTA, ttl=3600)
    handed(rq, T0)
    rq.update(info(e, kind=MTA, ttl=3600, retry=3), T0 + 10)
    assert drain(rq, T0 + 10, Sched.DELAY) == []


def test_delay_warning_dropped_when_envelope_removed_first() -> None:
    rq = RamQueue(warn_intervals=(3600,))
    (e,) = add(rq, 1, kind=MTA)
    handed(rq, T0)
    rq.update(info(e, kind=MTA, retry=3), T0 + 10)
    assert rq.remove(e, T0 + 10) == 1
    assert drain(rq, T0 + 10) == [Batch(BatchKind.REMOVE, (e,))]


def test_pause_masks() -> None:
    rq = RamQueue()
    mda = add(rq, 1, kind=MDA)
    mta = add(rq, 2, kind=MTA)
    assert handed(rq, T0, Sched.ALL & ~Sched.MDA) == mta
    assert handed(rq, T0, Sched.ALL & ~Sched.MDA) == []
    b = rq.batch(Sched.ALL & ~Sched.MDA, T0, 10)
    assert b.kind is BatchKind.NONE
    assert handed(rq, T0 + 100, Sched.MDA) == mda


def test_suspend_resume() -> None:
    rq = RamQueue()
    a, b2 = add(rq, 1, n=2)
    assert rq.suspend(a) == 1 and rq.suspend(a) == 0
    assert rq.schedule(1, T0) == 1  # the suspended one is not scheduled
    assert handed(rq, T0 + DAY) == [b2]
    (st,) = rq.envelopes(a, 1)
    assert st.evpid == a and st.flags & EnvelopeFlag.SUSPEND
    assert st.status == ("suspend",) and st.runstate == "pending"
    assert rq.resume(a, T0 + DAY) == 1 and rq.resume(a, T0 + DAY) == 0
    assert handed(rq, T0 + DAY) == [a]
    # suspended while in flight: after a tempfail it waits for resume
    assert rq.suspend(1) == 2
    rq.update(info(a, retry=1), T0 + DAY)
    rq.update(info(b2, retry=1), T0 + DAY)
    assert handed(rq, T0 + 2 * DAY) == []
    assert rq.resume(None, T0 + 2 * DAY) == 2
    assert sorted(handed(rq, T0 + 2 * DAY)) == [a, b2]


def test_suspend_a_scheduled_envelope_takes_it_out_of_the_ready_list() -> None:
    rq = RamQueue()
    (a,) = add(rq, 1)
    rq.batch(Sched.NONE, T0, 10)  # promoted, nothing allowed out
    assert rq.suspend(None) == 1
    assert handed(rq, T0) == []
    assert rq.resume(None, T0) == 1
    assert handed(rq, T0) == [a]


def test_schedule_by_evpid_msgid_all_skips_inflight() -> None:
    rq = RamQueue()
    a1, a2 = add(rq, 1, n=2, kind=MTA)
    (b1,) = add(rq, 2, kind=MTA)
    handed(rq, T0)
    for e in (a1, a2, b1):
        rq.update(info(e, kind=MTA, retry=5), T0)
    assert rq.schedule(a1, T0 + 1) == 1
    assert handed(rq, T0 + 1) == [a1]
    assert rq.schedule(1, T0 + 1) == 1  # a1 is in flight now
    assert rq.schedule(evp(1, 99), T0 + 1) == 0
    assert rq.schedule(99, T0 + 1) == 0
    assert rq.schedule(None, T0 + 1) == 2  # a2 (already due) and b1
    assert sorted(handed(rq, T0 + 1)) == [a2, b1]


def test_remove_by_evpid_msgid_all_including_inflight() -> None:
    rq = RamQueue()
    a1, a2 = add(rq, 1, n=2)
    (b1,) = add(rq, 2)
    (c1,) = add(rq, 3, kind=MTA)
    assert handed(rq, T0, Sched.MDA) == [a1, a2, b1]
    assert rq.remove(a1, T0) == 1 and rq.remove(a1, T0) == 0
    assert rq.remove(2, T0) == 1
    assert rq.remove(None, T0) == 2  # a2 (in flight) and c1
    assert rq.remove(evp(9, 9), T0) == 0
    # only c1 can go now; the in-flight ones go when they come back
    assert drain(rq, T0) == [Batch(BatchKind.REMOVE, (c1,))]
    rq.update(info(a1, retry=1), T0)  # tempfail of a removed envelope: remove it
    rq.delete(a2)  # delivered meanwhile: just forgotten
    assert drain(rq, T0) == [Batch(BatchKind.REMOVE, (a1,))]
    assert rq.hold(b1, 5) is False  # held after removal: removed too
    assert drain(rq, T0) == [Batch(BatchKind.REMOVE, (b1,))]
    assert len(rq) == 0 and rq.messages(0, 10) == []


def test_remove_of_suspended_envelope_still_removes() -> None:
    rq = RamQueue()
    (a,) = add(rq, 1)
    rq.suspend(a)
    assert rq.remove(a, T0) == 1
    assert rq.suspend(a) == 0
    assert drain(rq, T0) == [Batch(BatchKind.REMOVE, (a,))]


def test_protocol_errors() -> None:
    rq = RamQueue()
    (a,) = add(rq, 1)
    with pytest.raises(SchedulerError):
        rq.delete(a)  # not in flight
    with pytest.raises(SchedulerError):
        rq.update(info(a, retry=1), T0)
    with pytest.raises(SchedulerError):
        rq.hold(evp(5, 5), 1)
    with pytest.raises(SchedulerError):
        SchedulerInfo(evpid=5, type=MDA, creation=T0, expire=1)
    with pytest.raises(SchedulerError):
        RamQueue(warn_intervals=(1, 2, 3, 4, 5))


def test_hold_release_and_overflow() -> None:
    rq = RamQueue()
    ids = add(rq, 1, n=3, kind=MTA)
    handed(rq, T0)
    assert rq.hold(ids[0], 42) and rq.hold(ids[1], 42) and rq.hold(ids[2], 43)
    s = rq.stats()
    assert s["scheduler.ramqueue.hold"] == 3 and s["scheduler.ramqueue.holdq"] == 2
    (st,) = rq.envelopes(ids[0], 1)
    assert st.flags == EnvelopeFlag.PENDING | EnvelopeFlag.HOLD
    assert st.status == ("hold",) and st.runstate == "pending"
    assert rq.release(MTA, 42, 1) == 1
    assert handed(rq, T0 + 1) == [ids[0]]
    assert rq.release(MTA, 42, -1) == 1  # reschedule later (route failed)
    assert drain(rq, T0 + 1) == [Batch(BatchKind.UPDATE, (ids[1],))]
    assert handed(rq, T0 + 399) == []
    assert handed(rq, T0 + 400) == [ids[1]]
    assert rq.schedule(ids[2], T0 + 1) == 1  # schedule takes it off its hold queue
    assert handed(rq, T0 + 1) == [ids[2]]
    assert rq.release(MTA, 43, 0) == 0 and rq.release(MDA, 42, 0) == 0
    s = rq.stats()
    assert s["scheduler.ramqueue.hold"] == 0 and s["scheduler.ramqueue.holdq"] == 0


def test_full_hold_queue_tempfails_quickly() -> None:
    rq = RamQueue()
    ids = add(rq, 1, n=1001, kind=MTA)
    handed(rq, T0)
    assert all(rq.hold(e, 1) for e in ids[:1000])
    assert rq.hold(ids[1000], 1) is False
    assert drain(rq, T0) == [Batch(BatchKind.UPDATE, (ids[1000],))]
    assert handed(rq, T0 + 2) == [] and handed(rq, T0 + 3) == [ids[1000]]
    assert rq.stats()["scheduler.ramqueue.hold-overflow"] == 1


def test_listing_messages_and_envelopes() -> None:
    rq = RamQueue()
    for m in (30, 10, 20):
        add(rq, m, n=3, kind=MTA)
    rq.insert(info(evp(5, 1)))  # uncommitted: not listed
    assert rq.messages(0, 10) == [10, 20, 30]
    assert rq.messages(11, 1) == [20]
    e10 = [s.evpid for s in rq.envelopes(evp(10, 0), 10)]
    assert e10 == [evp(10, 1), evp(10, 2), evp(10, 3)]
    assert [s.evpid for s in rq.envelopes(evp(10, 2), 1)] == [evp(10, 2)]
    assert all(
        s.time == T0 and s.flags == EnvelopeFlag.PENDING for s in rq.envelopes(evp(10, 0), 9)
    )
    handed(rq, T0 + 5, Sched.MTA)
    assert {s.flags for s in rq.envelopes(evp(20, 0), 9)} == {EnvelopeFlag.INFLIGHT}
    assert {(s.runstate, s.status) for s in rq.envelopes(evp(20, 0), 9)} == {("inflight", ())}
    assert {s.time for s in rq.envelopes(evp(20, 0), 9)} == {T0 + 5}
    rq.remove(20, T0)
    for e in (evp(20, 1), evp(20, 2), evp(20, 3)):
        rq.delete(e)
    assert rq.messages(0, 10) == [10, 30]
    assert rq.envelopes(evp(20, 0), 10) == []


def test_stale_ready_entry_never_hands_out_a_reused_slot_as_the_wrong_type() -> None:
    rq = RamQueue()
    (a,) = add(rq, 1, kind=MTA)
    rq.batch(Sched.NONE, T0, 10)  # a is due: in the MTA ready list
    rq.suspend(a)  # its entry there is now stale
    rq.remove(a, T0)
    assert drain(rq, T0, Sched.REMOVE) == [Batch(BatchKind.REMOVE, (a,))]
    (b,) = add(rq, 2, kind=MDA)  # takes a's slot, due at once
    assert handed(rq, T0, Sched.MTA) == []
    assert handed(rq, T0, Sched.MDA) == [b]


def test_batch_keeps_a_message_and_a_destination_together() -> None:
    rq = RamQueue()
    dests = ["b.test", "a.test", "B.TEST", "a.test", "c.test"]
    for i, d in enumerate(dests):
        rq.insert(SchedulerInfo(evpid=evp(1, i + 1), type=MTA, creation=T0, expire=DAY, dest=d))
    rq.insert(SchedulerInfo(evpid=evp(2, 1), type=MTA, creation=T0, expire=DAY, dest="a.test"))
    rq.commit(2, T0)
    rq.commit(1, T0)
    (b,) = drain(rq, T0)
    # message 2 came first; in message 1 b.test (either case), then a.test, then c.test
    assert b.evpids == (evp(2, 1), evp(1, 1), evp(1, 3), evp(1, 2), evp(1, 4), evp(1, 5))


def test_promotion_after_a_long_sleep_is_spread_over_calls() -> None:
    from smtpd.scheduler import slots

    rq = RamQueue()
    n = slots.PROMOTE_BUDGET + 100
    for m in range(1, n + 1):  # one bucket each: due at T0 + 16*m
        add(rq, m, kind=MTA, creation=T0 + slots.BUCKET_SECONDS * m)
    late = T0 + slots.BUCKET_SECONDS * (n + 1)
    first = rq.batch(Sched.ALL & ~Sched.MTA, late, 10)
    assert first == Batch(BatchKind.NONE, delay=0)  # more is due: call again now
    assert len(handed(rq, late)) == n
