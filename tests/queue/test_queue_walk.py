"""qwalk: every envelope exactly once, even while the spool changes (the seed's bug)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from smtpd.queue.backend import BACKENDS, Kind, make_backend
from smtpd.queue.envelope import DeliveryType, Envelope, dump_envelope
from smtpd.queue.front import QueueFront


def env(evpid: int) -> Envelope:
    return Envelope(evpid=evpid, type=DeliveryType.MTA, dispatcher="relay", sender="a@b.test",
                    rcpt=f"r{evpid:x}@c.test", dest="c.test", ctime=1, ttl=100)


def add(front: QueueFront, evpid: int) -> None:
    """Put an envelope (and its message) straight into the store, ids chosen."""
    front.backend.put(Kind.MESSAGE, evpid >> 32, b"Received: x\n\nbody\n")
    front.backend.put(Kind.ENVELOPE, evpid, dump_envelope(env(evpid)))


@pytest.fixture(params=sorted(BACKENDS))
def front(request: pytest.FixtureRequest, tmp_path: Path) -> QueueFront:
    spool = tmp_path / "spool"
    return QueueFront(make_backend(request.param, spool), spool=spool, cache_size=8)


def test_walk_yields_everything_once_in_order(front: QueueFront) -> None:
    rng = random.Random(1)
    ids = {(rng.randrange(1, 2**32) << 32) | rng.randrange(1, 2**32) for _ in range(300)}
    for msgid in {e >> 32 for e in list(ids)[:50]}:
        ids.update((msgid << 32) | low for low in (1, 2, 3))  # several per message
    for e in ids:
        add(front, e)
    walked = [e.evpid for e in front.walk()]
    assert walked == sorted(ids)


@pytest.mark.parametrize("seed", range(5))
def test_walk_while_the_spool_changes(front: QueueFront, seed: int) -> None:
    rng = random.Random(seed)
    # Messages in every 16th bucket, three envelopes each.
    initial = sorted(
        ((bucket << 56) | (rng.randrange(1, 2**24) << 32) | low)
        for bucket in range(0x08, 0x100, 0x10)
        for low in (rng.randrange(1, 2**31), rng.randrange(2**31, 2**32))
    )
    for e in initial:
        add(front, e)
    deleted: set[int] = set()
    added: set[int] = set()
    seen: list[int] = []
    for envelope in front.walk():
        cur = envelope.evpid
        seen.append(cur)
        ahead = [e for e in initial if e > cur and e not in deleted]
        behind_bucket = rng.randrange(0, (cur >> 56) + 1)
        ahead_bucket = rng.randrange(cur >> 56, 0x100)
        for bucket in (behind_bucket, ahead_bucket):
            new = (bucket << 56) | (rng.randrange(1, 2**24) << 32) | rng.randrange(1, 2**32)
            add(front, new)
            added.add(new)
        # A new envelope in the message being walked, behind and ahead of the cursor.
        for low in (1, 0xFFFFFFFE):
            new = (cur >> 32 << 32) | low
            if new not in initial:
                add(front, new)
                added.add(new)
        if ahead and rng.random() < 0.5:
            victim = rng.choice(ahead)
            front.envelope_delete(victim, keep_message=True)
            deleted.add(victim)
        # Rewrites (retry counts) rename files over the old ones mid-walk.
        for e in ahead[:2]:
            if e not in deleted:
                front.envelope_update(dataclasses.replace(env(e), retry=len(seen)))
    assert len(seen) == len(set(seen)), "an envelope was walked twice"
    assert seen == sorted(seen)
    survivors = set(initial) - deleted
    assert survivors <= set(seen), "an envelope present throughout was missed"
    assert not (deleted & set(seen)), "an envelope deleted before it was reached was walked"
    assert set(seen) <= set(initial) | added


def test_second_walk_sees_additions(front: QueueFront) -> None:
    add(front, 0x5000000100000001)
    first = [e.evpid for e in front.walk()]
    add(front, 0x0100000100000001)
    assert first == [0x5000000100000001]
    assert [e.evpid for e in front.walk()] == [0x0100000100000001, 0x5000000100000001]
