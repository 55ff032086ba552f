"""Per-source accounting against hostile clients (sans-IO, injected clock).

One `SourceGuard` lives in the smtp process and sees every session: how many
sessions each address holds (`smtp limit max-sessions-per-ip`) and how many
AUTH failures it made (`smtp limit max-auth-failures`, `auth-ban`,
`auth-failure-delay`).  Memory is bounded: at most MAX_SOURCES addresses are
remembered for AUTH failures, the oldest forgotten first.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_SOURCES = 10000
# How long a failure is remembered when no ban follows it.
FAILURE_WINDOW = 3600.0


@dataclass(frozen=True)
class GuardLimits:
    max_sessions_per_ip: int = 0  # 0: no limit
    max_auth_failures: int = 5
    auth_ban: float = 900.0
    auth_failure_delay: float = 1.0
    max_delay: float = 10.0


@dataclass
class _Failures:
    count: int
    last: float
    banned_until: float = 0.0


class SourceGuard:
    def __init__(self, limits: GuardLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self.sessions: dict[str, int] = {}
        self.failures: OrderedDict[str, _Failures] = OrderedDict()

    # -- sessions ------------------------------------------------------------

    def open(self, src: str) -> bool:
        """Count a new session from src; False (not counted) over the limit."""
        limit = self.limits.max_sessions_per_ip
        held = self.sessions.get(src, 0)
        if limit and held >= limit:
            return False
        self.sessions[src] = held + 1
        return True

    def close(self, src: str) -> None:
        held = self.sessions.get(src, 0) - 1
        if held > 0:
            self.sessions[src] = held
        else:
            self.sessions.pop(src, None)

    # -- AUTH ----------------------------------------------------------------

    def _entry(self, src: str) -> _Failures | None:
        entry = self.failures.get(src)
        if entry is None:
            return None
        now = self.clock()
        if entry.banned_until:
            if now < entry.banned_until:
                return entry
        elif now - entry.last < FAILURE_WINDOW:
            return entry
        del self.failures[src]  # the ban or the window is over
        return None

    def auth_banned(self, src: str) -> bool:
        entry = self._entry(src)
        return entry is not None and entry.banned_until > 0

    def auth_failed(self, src: str) -> tuple[float, bool]:
        """Record a failure: (seconds to wait before replying, now banned?).
        The delay grows with the failures so far (as Postfix's
        smtpd_error_sleep_time), capped at max_delay."""
        now = self.clock()
        entry = self._entry(src)
        if entry is None:
            entry = _Failures(0, now)
            self.failures[src] = entry
            while len(self.failures) > MAX_SOURCES:
                self.failures.popitem(last=False)
        entry.count += 1
        entry.last = now
        self.failures.move_to_end(src)
        banned = entry.count >= self.limits.max_auth_failures
        if banned:
            entry.banned_until = now + self.limits.auth_ban
        delay = min(self.limits.auth_failure_delay * entry.count, self.limits.max_delay)
        return delay, banned

    def auth_succeeded(self, src: str) -> None:
        entry = self._entry(src)
        if entry is not None and not entry.banned_until:
            del self.failures[src]


# Test-only fault injection (no LD_PRELOAD): honoured only when this variable
# is set, e.g. PYSMTPD_TEST_FAULTS="smtp.write=EIO:4096" makes message writes
# fail with EIO once a message passes 4096 bytes.
FAULTS_ENV = "PYSMTPD_TEST_FAULTS"


@dataclass(frozen=True)
class WriteFaults:
    errno: int = 0  # 0: no fault
    after: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WriteFaults:
        for item in env.get(FAULTS_ENV, "").split(","):
            key, _, value = item.partition("=")
            if key != "smtp.write":
                continue
            name, _, after = value.partition(":")
            code = getattr(errno_mod, name, None)
            if isinstance(code, int) and after.isdigit():
                return cls(code, int(after))
        return cls()

    def check(self, size: int) -> None:
        """Raise the injected error once a message reaches `size` bytes."""
        if self.errno and size > self.after:
            raise OSError(self.errno, os.strerror(self.errno))
