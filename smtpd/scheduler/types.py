"""The scheduler's vocabulary: what the queue tells it, what batch() answers.

Everything here is plain data (frozen dataclasses and enums) so that the
scheduler core stays sans-IO: the scheduler process turns imsgs into calls
and `Batch` results back into imsgs.  Times are integer seconds since the
epoch and are always passed in by the caller; nothing here reads a clock.

Names follow upstream (usr.sbin/smtpd/smtpd.h: `struct scheduler_info`,
`SCHED_*`, `EF_*`) so that reading OpenSMTPD's source side by side is easy.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Final

# Backoff bases of scheduler_ramqueue.c: an envelope's n-th try is due at
# creation + base * n**2 (relative to the creation time, not to the last try).
BACKOFF_TRANSFER: Final = 400  # MTA: relaying to another host
BACKOFF_DELIVERY: Final = 10  # MDA and bounce generation: local work
BACKOFF_OVERFLOW: Final = 3  # a hold queue was full: retry soon

# Upstream keeps at most MAX_BOUNCE_WARN delay-warning intervals; the default
# configuration warns once after 4 hours (smtpd.c: sc_bounce_warn[0]).
MAX_BOUNCE_WARN: Final = 4
DEFAULT_WARN_INTERVALS: Final = (4 * 3600,)

# Times are stored as unsigned 32-bit seconds (good until 2106) to keep the
# per-envelope footprint small; later instants are clamped to TIME_MAX.
TIME_MAX: Final = 0xFFFFFFFF
MSGID_MAX: Final = 0xFFFFFFFF
EVPID_MAX: Final = 0xFFFFFFFFFFFFFFFF


class SchedulerError(Exception):
    """A caller broke the protocol (unknown or duplicated id, wrong state).

    In the daemon this is a bug between queue and scheduler: the scheduler
    process lets it end the process (fail closed, DESIGN.md section 1).
    """


class EnvelopeType(enum.IntEnum):
    """Upstream's `enum delivery_type`: who works on the envelope next."""

    MDA = 0  # local delivery
    MTA = 1  # relay to another host
    BOUNCE = 2  # generate a DSN to the sender


class Sched(enum.IntFlag):
    """What a batch may contain (upstream's SCHED_* mask bits).

    The scheduler process builds the mask: UPDATE always; REMOVE, EXPIRE,
    BOUNCE and DELAY while fewer than `max inflight` envelopes are out; MDA
    and MTA unless `smtpctl pause mda|mta` is in force.
    """

    NONE = 0
    REMOVE = 0x01
    EXPIRE = 0x02
    UPDATE = 0x04
    BOUNCE = 0x08
    MDA = 0x10
    MTA = 0x20
    DELAY = 0x40  # delay warnings (DSN "delayed", RFC 3464 Action: delayed)
    ALL = REMOVE | EXPIRE | UPDATE | BOUNCE | MDA | MTA | DELAY


class BatchKind(enum.Enum):
    """What the caller must do with the envelopes of a `Batch`."""

    NONE = "none"  # nothing due: sleep `delay` seconds (None: until an event)
    SCHEDULE = "schedule"  # hand to `type`'s worker; they are now in flight
    REMOVE = "remove"  # delete from the queue (removed by smtpctl)
    EXPIRE = "expire"  # `queue ttl` passed: bounce, then delete from the queue
    UPDATE = "update"  # rescheduled internally (hold queue overflow/release)
    DELAY = "delay"  # send a delay warning for each; they stay queued


class EnvelopeFlag(enum.IntFlag):
    """Upstream's EF_* flags as reported to `show queue`."""

    NONE = 0
    PENDING = 0x01
    INFLIGHT = 0x02
    SUSPEND = 0x04
    HOLD = 0x08


@dataclass(frozen=True, slots=True)
class SchedulerInfo:
    """Upstream's `struct scheduler_info`: the schedule-relevant envelope fields.

    `expire` is the time-to-live in seconds (the envelope's `ttl`), counted
    from `creation`.  `retry` is the number of failed tries so far (the queue
    increments it before reporting a tempfail).  `nexttry` is informative
    only: the scheduler computes the next try and returns it.  `dest` is not
    upstream's: a batch puts one message's envelopes for one destination
    next to each other so that the MTA can send them in one transaction.
    """

    evpid: int
    type: EnvelopeType
    creation: int
    expire: int
    retry: int = 0
    lasttry: int = 0
    lastbounce: int = 0
    nexttry: int = 0
    dest: str = ""  # the next hop's domain (MTA): batches keep a route together

    def __post_init__(self) -> None:
        msgid = self.evpid >> 32
        if not (0 < self.evpid <= EVPID_MAX and msgid != 0 and self.evpid & MSGID_MAX):
            raise SchedulerError(f"invalid evpid {self.evpid!r}")
        if not isinstance(self.dest, str):
            raise SchedulerError(f"invalid dest {self.dest!r}")
        if not isinstance(self.type, EnvelopeType):
            raise SchedulerError(f"invalid envelope type {self.type!r}")
        for name in ("creation", "expire", "retry", "lasttry", "lastbounce", "nexttry"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise SchedulerError(f"invalid {name} {value!r}")


@dataclass(frozen=True, slots=True)
class EnvelopeState:
    """One line of `show queue` as far as the scheduler knows it.

    `time` is the next try for a pending envelope, the time it became due
    for a scheduled or held one and the time it was handed out when in flight
    (upstream's scheduler_ram_envelopes()).
    """

    evpid: int
    flags: EnvelopeFlag
    time: int

    @property
    def runstate(self) -> str:
        """`show queue`'s runstate word: "pending|<nexttry - now>" or
        "inflight|<now - time>" (smtpctl.c: show_queue_envelope())."""
        return "inflight" if self.flags & EnvelopeFlag.INFLIGHT else "pending"

    @property
    def status(self) -> tuple[str, ...]:
        """The scheduler's words for `show queue`'s status field, in upstream's
        order (after the queue's bounce,auth,internal): suspend, hold."""
        words = []
        if self.flags & EnvelopeFlag.SUSPEND:
            words.append("suspend")
        if self.flags & EnvelopeFlag.HOLD:
            words.append("hold")
        return tuple(words)


@dataclass(frozen=True, slots=True)
class Batch:
    """The answer of batch(): one kind, one envelope type, grouped by message.

    For SCHEDULE, `type` says whose work it is; envelopes of one message are
    adjacent in `evpids`.  For DELAY, `warn_after[i]` is the warn interval
    (seconds since creation) that `evpids[i]` has just passed.  For NONE,
    `delay` is the number of seconds until something may be due, or None if
    nothing is pending at all (wake up on the next imsg only).
    """

    kind: BatchKind
    evpids: tuple[int, ...] = ()
    type: EnvelopeType | None = None
    delay: int | None = None
    warn_after: tuple[int, ...] = field(default=())


def backoff_base(kind: EnvelopeType) -> int:
    """The backoff base of upstream: relaying is slow to retry, local work is not."""
    return BACKOFF_TRANSFER if kind is EnvelopeType.MTA else BACKOFF_DELIVERY


def backoff(t0: int, base: int, step: int) -> int:
    """scheduler_backoff(): the step-th try is due at t0 + base * step**2."""
    return t0 + base * step * step


def next_try(t0: int, base: int, step: int, now: int) -> int:
    """scheduler_next(): the first backoff instant after `now`, from `step` on.

    Upstream loops step by step; solving the inequality keeps this O(1) for
    envelopes that sat in a paused queue for a long time.
    """
    t = backoff(t0, base, step)
    if t > now:
        return t
    # smallest s >= step with t0 + base*s*s > now
    need = (now - t0) // base  # base*s*s > now-t0  <=>  s*s > need (integers)
    s = max(step, math.isqrt(max(need, 0)))
    while backoff(t0, base, s) <= now:
        s += 1
    return backoff(t0, base, s)


def clamp_time(t: int) -> int:
    return t if t <= TIME_MAX else TIME_MAX
