"""SourceGuard (smtpd/smtp/guard.py): per-source session counts and AUTH
failure accounting on an injected clock, and the test-only write faults."""

from __future__ import annotations

import errno

import pytest

from smtpd.smtp import guard as G
from smtpd.smtp.guard import GuardLimits, SourceGuard, WriteFaults


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_per_source_are_limited_and_released() -> None:
    g = SourceGuard(GuardLimits(max_sessions_per_ip=2), Clock())
    assert g.open("a") and g.open("a")
    assert not g.open("a")          # the third from a
    assert g.open("b")              # others unaffected
    g.close("a")
    assert g.open("a")
    for _ in range(3):
        g.close("a")
    assert "a" not in g.sessions    # no entry left behind
    g.close("a")                    # an extra close never goes negative
    assert "a" not in g.sessions


def test_no_session_limit_by_default() -> None:
    g = SourceGuard(GuardLimits(), Clock())
    assert all(g.open("a") for _ in range(1000))


def test_auth_failures_grow_the_delay_then_ban_until_it_expires() -> None:
    clock = Clock()
    g = SourceGuard(GuardLimits(max_auth_failures=3, auth_ban=60, auth_failure_delay=1.5,
                                max_delay=4), clock)
    assert g.auth_failed("a") == (1.5, False)
    assert g.auth_failed("a") == (3.0, False)
    assert not g.auth_banned("a")
    assert g.auth_failed("a") == (4.0, True)   # capped delay, banned
    assert g.auth_banned("a") and not g.auth_banned("b")
    g.auth_succeeded("a")                      # cannot lift a ban
    assert g.auth_banned("a")
    clock.now += 59
    assert g.auth_banned("a")
    clock.now += 2
    assert not g.auth_banned("a")
    assert g.auth_failed("a") == (1.5, False)  # counting starts over


def test_success_forgets_failures_and_old_failures_expire() -> None:
    clock = Clock()
    g = SourceGuard(GuardLimits(max_auth_failures=2, auth_failure_delay=1), clock)
    g.auth_failed("a")
    g.auth_succeeded("a")
    assert g.auth_failed("a") == (1.0, False)
    clock.now += G.FAILURE_WINDOW + 1
    assert g.auth_failed("a") == (1.0, False)  # the old one was forgotten


def test_remembered_sources_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(G, "MAX_SOURCES", 10)
    g = SourceGuard(GuardLimits(max_auth_failures=1), Clock())
    for i in range(50):
        g.auth_failed(f"10.0.0.{i}")
    assert len(g.failures) == 10
    assert g.auth_banned("10.0.0.49") and not g.auth_banned("10.0.0.0")


def test_write_faults_only_from_the_test_variable() -> None:
    assert WriteFaults.from_env({}) == WriteFaults()
    WriteFaults.from_env({}).check(10**9)  # no fault configured: never raises
    f = WriteFaults.from_env({G.FAULTS_ENV: "other=1,smtp.write=ENOSPC:100"})
    assert f == WriteFaults(errno.ENOSPC, 100)
    f.check(100)
    with pytest.raises(OSError) as exc:
        f.check(101)
    assert exc.value.errno == errno.ENOSPC
    for bad in ("smtp.write=NOPE:1", "smtp.write=EIO", "smtp.write=EIO:x"):
        assert WriteFaults.from_env({G.FAULTS_ENV: bad}) == WriteFaults()
