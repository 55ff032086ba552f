from __future__ import annotations

import pytest

from smtpd.bounce import DsnKind, DsnRet, Notify, parse_notify, parse_ret, should_bounce

ALL = list(DsnKind)


def test_never_to_null_sender() -> None:
    for kind in ALL:
        for notify in (None, Notify.SUCCESS | Notify.FAILURE | Notify.DELAY):
            assert not should_bounce("", notify, kind)


def test_default_is_failure_and_delay() -> None:
    assert should_bounce("a@b", None, DsnKind.FAILED)
    assert should_bounce("a@b", None, DsnKind.DELAYED)
    assert not should_bounce("a@b", None, DsnKind.DELIVERED)
    assert not should_bounce("a@b", None, DsnKind.RELAYED)


def test_never() -> None:
    assert not any(should_bounce("a@b", Notify.NEVER, k) for k in ALL)


@pytest.mark.parametrize(
    ("notify", "expected"),
    [
        ("SUCCESS", {DsnKind.DELIVERED, DsnKind.RELAYED}),
        ("FAILURE", {DsnKind.FAILED}),
        ("DELAY", {DsnKind.DELAYED}),
        ("success,failure", {DsnKind.DELIVERED, DsnKind.RELAYED, DsnKind.FAILED}),
        ("FAILURE,DELAY,SUCCESS", set(ALL)),
    ],
)
def test_explicit(notify: str, expected: set[DsnKind]) -> None:
    n = parse_notify(notify)
    assert {k for k in ALL if should_bounce("a@b", n, k)} == expected


@pytest.mark.parametrize("bad", ["NEVER,SUCCESS", "", "SOMETIMES", "DELAY,DELAY"])
def test_parse_notify_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_notify(bad)


def test_parse_ret() -> None:
    assert parse_ret("full") is DsnRet.FULL and parse_ret("HDRS") is DsnRet.HDRS
    with pytest.raises(ValueError):
        parse_ret("BODY")
