"""IntMap and SlotFifo against plain dict and deque."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd.scheduler.columns import IntMap, SlotFifo

KEYS = st.one_of(
    st.integers(0, 2**64 - 1),
    st.integers(0, 64),  # dense small keys collide in the low bits
    st.integers(1, 64).map(lambda m: (m << 32) | 1),  # evpid-like
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "pop", "get"]), KEYS, st.integers(0, 2**32 - 2))))
def test_intmap_matches_dict(ops: list[tuple[str, int, int]]) -> None:
    m, d = IntMap(), {}
    for op, key, value in ops:
        if op == "set":
            m.set(key, value)
            d[key] = value
        elif op == "pop":
            assert m.pop(key) == d.pop(key, -1)
        else:
            assert m.get(key) == d.get(key, -1)
        assert len(m) == len(d)
    assert dict(m.items()) == d
    assert sorted(m.keys()) == sorted(d)


def test_intmap_survives_removal_in_table_order() -> None:
    # "remove all" walks the table in order; this once left one dense
    # cluster after a shrink and made each pop a scan of the whole table
    m = IntMap()
    keys = [(msgid << 32) | 1 for msgid in range(0x10000001, 0x10000001 + 20000)]
    for i, k in enumerate(keys):
        m.set(k, i)
    order = list(m.keys())
    for k in order[:16000]:
        m.pop(k)
    longest = run = 0
    for v in list(m._vals) * 2:
        run = run + 1 if v else 0
        longest = max(longest, run)
    assert longest < 64
    for k in order[16000:]:
        assert m.get(k) == keys.index(k)


def test_intmap_random_churn_keeps_every_key() -> None:
    rnd = random.Random(7)
    m, d = IntMap(), {}
    for step in range(30000):
        k = rnd.getrandbits(64)
        m.set(k, step)
        d[k] = step
        if rnd.random() < 0.45 and d:
            victim = rnd.choice(list(d)) if step % 1000 == 0 else next(iter(d))
            assert m.pop(victim) == d.pop(victim)
    assert all(m.get(k) == v for k, v in d.items())
    assert len(m) == len(d)
    for k in list(d):
        m.pop(k)
    assert len(m) == 0 and m.nbytes() < 1024  # an empty table goes back to minimal size


def test_slotfifo_matches_deque() -> None:
    rnd = random.Random(3)
    f, q = SlotFifo(), deque[int]()
    for _ in range(50000):
        if rnd.random() < 0.55:
            x = rnd.randrange(2**32)
            f.append(x)
            q.append(x)
        elif q:
            assert f.popleft() == q.popleft()
        assert len(f) == len(q)
    while q:
        assert f.popleft() == q.popleft()
    with pytest.raises(IndexError):
        f.popleft()
