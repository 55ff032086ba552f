"""The queue's side of a streamed `show queue`: walks read a page at a time,
dropped when idle or when too many are open (smtpd/queue/listing.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from smtpd.control.listing import merge_states, page_msgids
from smtpd.queue import listing
from smtpd.queue.listing import Listings


def _walk(n: int, seen: list[int]) -> Iterator[Any]:
    for i in range(n):
        seen.append(i)  # how far the walk was pulled
        yield i


def test_pages_pull_the_walk_no_further_than_asked() -> None:
    seen: list[int] = []
    lists = Listings()
    lists.open(1, _walk(7, seen))
    assert lists.page(1, size=3) == ([0, 1, 2], True)
    assert seen == [0, 1, 2]  # a page in memory, not the queue
    assert lists.page(1, size=3) == ([3, 4, 5], True)
    assert lists.page(1, size=3) == ([6], False)
    assert lists.page(1) is None and len(lists) == 0  # done: closed


def test_idle_and_surplus_walks_are_dropped() -> None:
    now = [0.0]
    lists = Listings(clock=lambda: now[0])
    lists.open(1, iter(range(10)))
    now[0] = listing.IDLE_SECONDS + 1
    lists.open(2, iter(range(10)))
    assert lists.page(1) is None  # idle too long
    for key in range(3, 3 + listing.MAX_OPEN):
        now[0] += 1
        lists.open(key, iter(range(10)))
    assert len(lists) == listing.MAX_OPEN and lists.page(2) is None  # the oldest went
    lists.close(3)
    assert lists.page(3) is None


def test_merge_states_and_page_msgids() -> None:
    line = "0a00000100000001|inet4|mta||s@x|r@y|r@y|100|200|0|0|pending|-1|"
    other = "0a00000200000001|inet4|mta|bounce|s@x|r@y|r@y|100|200|0|0|pending|-1|"
    assert page_msgids([line, other, line]) == ["0a000001", "0a000002"]
    merged = merge_states([line, other], ["0a00000100000001|inflight|90|suspend",
                                          "garbage", "0a00000200000001|pending|130|"], 100)
    assert merged[0].split("|")[3] == "suspend" and merged[0].split("|")[11:13] == [
        "inflight", "10"]
    assert merged[1].split("|")[3] == "bounce" and merged[1].split("|")[11:13] == [
        "pending", "30"]
