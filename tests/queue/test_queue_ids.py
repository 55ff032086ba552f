from __future__ import annotations

import itertools

import pytest

from smtpd.queue.ids import (
    IdError,
    bucket_of,
    evpid_to_msgid,
    format_evpid,
    format_msgid,
    new_evpid,
    new_msgid,
    parse_evpid,
    parse_id,
    parse_msgid,
)


def test_new_ids_are_nonzero_and_nested() -> None:
    zeros = itertools.chain([0, 0], itertools.repeat(0xDEADBEEF))
    msgid = new_msgid(lambda bits: next(zeros))
    assert msgid == 0xDEADBEEF
    lows = iter([0, 7])
    evpid = new_evpid(msgid, lambda bits: next(lows))
    assert evpid == 0xDEADBEEF00000007
    assert evpid_to_msgid(evpid) == msgid
    assert format_evpid(evpid)[:8] == format_msgid(msgid) == "deadbeef"
    assert bucket_of(msgid) == 0xDE


def test_random_ids() -> None:
    ids = {new_evpid(new_msgid()) for _ in range(200)}
    assert len(ids) == 200
    assert all(e >> 32 and e & 0xFFFFFFFF for e in ids)


def test_parse_round_trip() -> None:
    assert parse_msgid("0000beef") == 0xBEEF
    assert parse_evpid("deadbeef00000001") == 0xDEADBEEF00000001
    assert parse_id("deadbeef") == (0xDEADBEEF, None)
    assert parse_id("deadbeef00000001") == (0xDEADBEEF, 0xDEADBEEF00000001)


@pytest.mark.parametrize(
    "text",
    ["", "beef", "0x00beef", "+000beef", "0000_eef", " 000beef", "00000000", "ghijklmn",
     "000beef0a"],
)
def test_parse_msgid_rejects(text: str) -> None:
    with pytest.raises(IdError):
        parse_msgid(text)


@pytest.mark.parametrize(
    "text", ["deadbeef00000000", "00000000deadbeef", "deadbeef0000001", "0xadbeef00000001"]
)
def test_parse_evpid_rejects(text: str) -> None:
    with pytest.raises(IdError):
        parse_evpid(text)


def test_format_rejects_out_of_range() -> None:
    with pytest.raises(IdError):
        format_msgid(0)
    with pytest.raises(IdError):
        format_msgid(1 << 32)
    with pytest.raises(IdError):
        format_evpid(0x1234)
