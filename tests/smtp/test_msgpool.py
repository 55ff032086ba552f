"""The smtp process's spare (msgid, fd) pairs (smtpd/smtp/msgpool.py), with a
fake queue: refilled ahead of MAIL, taken without waiting, the queue's
refusal passed on, and nothing leaked when refusing, draining or closing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from smtpd.smtp import msgpool
from smtpd.smtp.msgpool import MessagePool
from smtpd.smtp.reply import Reply

FULL = Reply(452, "4.3.1", "Insufficient system storage")


class FakeQueue:
    def __init__(self) -> None:
        self.next = 1
        self.full = False
        self.fail_open = False
        self.live: dict[int, int] = {}  # msgid -> fd handed out
        self.rolled_back: list[int] = []
        self.creates = 0

    async def create(self) -> int | Reply:
        self.creates += 1
        await asyncio.sleep(0)  # an imsg round trip
        if self.full:
            return FULL
        self.next += 1
        return self.next

    async def open(self, msgid: int) -> int | Reply:
        await asyncio.sleep(0)
        if self.fail_open:
            return Reply(451, "4.3.0", "Temporary failure")
        fd = os.open(os.devnull, os.O_WRONLY)
        self.live[msgid] = fd
        return fd

    def rollback(self, msgid: int) -> None:
        self.rolled_back.append(msgid)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _settle(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0.01))


def test_pairs_are_made_ahead_and_taken_without_the_queue(
        loop: asyncio.AbstractEventLoop) -> None:
    q = FakeQueue()
    pool = MessagePool(q.create, q.open, q.rollback, spare=3)

    async def run() -> list[tuple[int, int]]:
        pool.refill()
        await asyncio.sleep(0.01)
        assert pool.ready == 3 and q.creates == 3
        taken = []
        for _ in range(2):
            pair = await pool.take()
            assert isinstance(pair, tuple)
            taken.append(pair)
        assert q.creates == 3  # taken from the ready ones, no queue round trip
        await asyncio.sleep(0.01)
        assert pool.ready == 3 and q.creates == 5  # refilled behind them
        return taken

    taken = loop.run_until_complete(run())
    assert all(fd == q.live[msgid] for msgid, fd in taken)
    pool.close()
    assert sorted(q.rolled_back) == sorted(set(q.live) - {msgid for msgid, _fd in taken})
    for msgid, fd in q.live.items():
        if msgid in q.rolled_back:
            with pytest.raises(OSError):
                os.fstat(fd)  # given back: closed
        else:
            os.close(fd)


def test_an_empty_pool_asks_the_queue_and_passes_its_refusal_on(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    q = FakeQueue()
    q.full = True
    pool = MessagePool(q.create, q.open, q.rollback, spare=2, clock=lambda: clock[0])

    async def run() -> None:
        assert await pool.take() == FULL
        await asyncio.sleep(0.01)
        creates = q.creates
        assert await pool.take() == FULL  # refilling paused: only the MAIL's own ask
        await asyncio.sleep(0.01)
        assert q.creates == creates + 1 and pool.ready == 0
        q.full = False
        clock[0] += msgpool.REFILL_BACKOFF + 1
        pair = await pool.take()
        assert isinstance(pair, tuple)
        os.close(pair[1])
        await asyncio.sleep(0.01)
        assert pool.ready == 2

    loop.run_until_complete(run())
    pool.close()


def test_a_failed_open_rolls_the_message_back(loop: asyncio.AbstractEventLoop) -> None:
    q = FakeQueue()
    q.fail_open = True
    pool = MessagePool(q.create, q.open, q.rollback, spare=2)
    answer = loop.run_until_complete(pool.take())
    assert isinstance(answer, Reply) and answer.code == 451
    _settle(loop)
    assert q.rolled_back and not q.live
    pool.close()


def test_drain_gives_spares_back_and_pauses(loop: asyncio.AbstractEventLoop) -> None:
    clock = [0.0]
    q = FakeQueue()
    pool = MessagePool(q.create, q.open, q.rollback, spare=2, clock=lambda: clock[0])

    async def run() -> None:
        pool.refill()
        await asyncio.sleep(0.01)
        assert pool.ready == 2
        pool.drain()
        assert pool.ready == 0 and len(q.rolled_back) == 2
        pool.refill()
        await asyncio.sleep(0.01)
        assert pool.ready == 0  # paused after a full disk
        clock[0] += msgpool.REFILL_BACKOFF + 1
        pool.refill()
        await asyncio.sleep(0.01)
        assert pool.ready == 2

    loop.run_until_complete(run())
    pool.close()
    assert len(q.rolled_back) == 4
