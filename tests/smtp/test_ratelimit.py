"""Rate limits per address and per user, with an injected clock."""

from __future__ import annotations

from smtpd.smtp.ratelimit import MAX_KEYS, Rate, RateKind, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_counts_and_resets() -> None:
    clock = Clock()
    r = RateLimiter([Rate(RateKind.MESSAGES, 3, 60)], clock)
    for _ in range(3):
        assert r.allow(RateKind.MESSAGES, ["ip:a"]) is None
    assert r.allow(RateKind.MESSAGES, ["ip:a"]) == "ip:a"
    assert r.allow(RateKind.MESSAGES, ["ip:b"]) is None       # other keys unaffected
    assert r.retry_after(RateKind.MESSAGES, "ip:a") == 61
    clock.now += 60
    assert r.allow(RateKind.MESSAGES, ["ip:a"]) is None       # a new window


def test_every_key_must_pass_and_nothing_counts_on_refusal() -> None:
    r = RateLimiter([Rate(RateKind.RECIPIENTS, 2, 60)], Clock())
    assert r.allow(RateKind.RECIPIENTS, ["ip:a", "user:bob"]) is None
    assert r.allow(RateKind.RECIPIENTS, ["ip:c", "user:bob"]) is None
    # bob is at 2: refused, and ip:d is not charged for the refused event
    assert r.allow(RateKind.RECIPIENTS, ["ip:d", "user:bob"]) == "user:bob"
    assert r.allow(RateKind.RECIPIENTS, ["ip:d"], n=2) is None


def test_unlimited_kinds_and_bounded_memory() -> None:
    r = RateLimiter([Rate(RateKind.CONNECTIONS, 1, 60)], Clock())
    assert r.allow(RateKind.MESSAGES, ["ip:a"]) is None       # no limit configured
    for i in range(MAX_KEYS + 10):
        r.allow(RateKind.CONNECTIONS, [f"ip:{i}"])
    assert len(r.windows[RateKind.CONNECTIONS]) == MAX_KEYS
