"""Queue errors: each names the object it is about, none is fatal to the daemon."""

from __future__ import annotations

from smtpd.queue.blob import Kind


class QueueError(Exception):
    """Base class of the queue front's errors."""


class NotFound(QueueError):
    """No such message or envelope (unknown id, or already removed)."""

    def __init__(self, kind: Kind, oid: int) -> None:
        self.kind = kind
        self.oid = oid
        super().__init__(f"{kind} {_fmt(kind, oid)} not found")


class QueueCorrupt(QueueError):
    """A stored object cannot be read back: tampered, truncated, wrong key,
    bad gzip, bad envelope text. Only that message is affected."""

    def __init__(self, kind: Kind, oid: int, reason: str) -> None:
        self.kind = kind
        self.oid = oid
        self.reason = reason
        super().__init__(f"{kind} {_fmt(kind, oid)} is corrupt: {reason}")

    @property
    def msgid(self) -> int:
        return self.oid >> 32 if self.kind in (Kind.ENVELOPE, Kind.CORRUPT_ENVELOPE) else self.oid


class KeyUnavailable(QueueError):
    """An object is encrypted with a key we were not given. Not corruption:
    the file is left in place (retry once the key is configured)."""

    def __init__(self, kind: Kind, oid: int, reason: str) -> None:
        self.kind = kind
        self.oid = oid
        self.reason = reason
        super().__init__(f"{kind} {_fmt(kind, oid)} is unreadable: {reason}")

    @property
    def msgid(self) -> int:
        return self.oid >> 32 if self.kind in (Kind.ENVELOPE, Kind.CORRUPT_ENVELOPE) else self.oid


class WrongKey(QueueError):
    """The ``queue encryption`` key is not the one the spool was written with."""


def _fmt(kind: Kind, oid: int) -> str:
    return f"{oid:016x}" if kind in (Kind.ENVELOPE, Kind.CORRUPT_ENVELOPE) else f"{oid:08x}"


class LeaseLost(Exception):
    """Another node took this node's envelopes: its in-memory state is stale."""
