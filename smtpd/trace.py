"""Trace and profile subsystems, upstream's names (smtpd -T, smtpctl trace)."""

from __future__ import annotations

import enum


class Trace(enum.IntFlag):
    IMSG = 1 << 0
    IO = 1 << 1
    SMTP = 1 << 2
    FILTERS = 1 << 3
    TRANSFER = 1 << 4
    BOUNCE = 1 << 5
    SCHEDULER = 1 << 6
    EXPAND = 1 << 7
    LOOKUP = 1 << 8
    STAT = 1 << 9
    RULES = 1 << 10
    MPROC = 1 << 11
    TABLES = 1 << 12
    QUEUE = 1 << 13
    ALL = (1 << 14) - 1


class Profile(enum.IntFlag):
    IMSG = 1 << 0
    QUEUE = 1 << 1


def parse_trace(name: str) -> Trace:
    try:
        return Trace[name.upper().replace("-", "_")]
    except KeyError:
        raise ValueError(f"unknown trace subsystem {name!r} (accepted: "
                         + ", ".join(t.name.lower() for t in Trace if t.name) + ")") from None


def parse_profile(name: str) -> Profile:
    try:
        return Profile[name.upper()]
    except KeyError:
        raise ValueError(f"unknown profile subsystem {name!r} (accepted: "
                         + ", ".join(p.name.lower() for p in Profile if p.name) + ")") from None


TRACE_NAMES = tuple(t.name.lower() for t in Trace if t.name)
PROFILE_NAMES = tuple(p.name.lower() for p in Profile if p.name)
