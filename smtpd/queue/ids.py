"""Message and envelope ids, as upstream (queue.c: queue_generate_msgid/evpid).

A msgid is a random nonzero 32-bit number; an evpid is ``msgid << 32`` with a
random nonzero low half, so an evpid names its message and sorts with it:
ordering evpids numerically equals ordering by (bucket, msgid, evpid), the
spool's directory order. Text forms are ``%08x`` and ``%016x`` (the msgid in
the ``250 2.0.0 <msgid> Message accepted`` reply is the evpid's first 8 hex).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable

MSGID_MAX = 0xFFFFFFFF
EVPID_MAX = 0xFFFFFFFFFFFFFFFF
_HEX = frozenset(string.hexdigits)


class IdError(ValueError):
    """A malformed or out-of-range message or envelope id."""


def new_msgid(randbits: Callable[[int], int] = secrets.randbits) -> int:
    """A random nonzero 32-bit message id (zero means "none" upstream)."""
    while True:
        msgid = randbits(32)
        if msgid != 0:
            return msgid


def new_evpid(msgid: int, randbits: Callable[[int], int] = secrets.randbits) -> int:
    """A random envelope id of ``msgid``: msgid in the high half, nonzero low half."""
    check_msgid(msgid)
    while True:
        low = randbits(32)
        if low != 0:
            return (msgid << 32) | low


def check_msgid(msgid: int) -> int:
    if not 0 < msgid <= MSGID_MAX:
        raise IdError(f"invalid msgid {msgid!r}")
    return msgid


def check_evpid(evpid: int) -> int:
    if not 0 < evpid <= EVPID_MAX or (evpid >> 32) == 0 or (evpid & MSGID_MAX) == 0:
        raise IdError(f"invalid evpid {evpid!r}")
    return evpid


def evpid_to_msgid(evpid: int) -> int:
    return check_evpid(evpid) >> 32


def bucket_of(msgid: int) -> int:
    """The spool bucket (first two hex digits of the msgid)."""
    return check_msgid(msgid) >> 24


def format_msgid(msgid: int) -> str:
    return f"{check_msgid(msgid):08x}"


def format_evpid(evpid: int) -> str:
    return f"{check_evpid(evpid):016x}"


def _parse_hex(text: str, width: int, what: str) -> int:
    # int(text, 16) alone would accept "0x..", "+", "_" and surrounding spaces.
    if len(text) != width or not all(c in _HEX for c in text):
        raise IdError(f"invalid {what} {text!r}: expected {width} hex digits")
    return int(text, 16)


def parse_msgid(text: str) -> int:
    """Exactly 8 hex digits, nonzero."""
    value = _parse_hex(text, 8, "msgid")
    if value == 0:
        raise IdError(f"invalid msgid {text!r}: zero")
    return value


def parse_evpid(text: str) -> int:
    """Exactly 16 hex digits, both halves nonzero."""
    value = _parse_hex(text, 16, "evpid")
    try:
        return check_evpid(value)
    except IdError:
        raise IdError(f"invalid evpid {text!r}: a half is zero") from None


def parse_id(text: str) -> tuple[int, int | None]:
    """An smtpctl-style argument: a msgid (8 hex) or an evpid (16 hex).

    Returns ``(msgid, evpid or None)``.
    """
    if len(text) == 8:
        return parse_msgid(text), None
    evpid = parse_evpid(text)
    return evpid >> 32, evpid
