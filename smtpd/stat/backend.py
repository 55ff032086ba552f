"""The StatBackend protocol and its registry (one backend per module)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from smtpd.stat.kinds import Histogram, StatKind, StatUpdate
from smtpd.stat.persistent import PersistentStat, Retention
from smtpd.stat.ramstat import RamStat


class StatBackend(Protocol):
    """Where control keeps stats.  `apply` is called for every update batch."""

    def apply(self, updates: list[StatUpdate], now_ns: int) -> None: ...

    def raw(self) -> dict[str, tuple[StatKind, int | Histogram]]:
        """Every stat's kind and current value (histograms whole)."""
        ...

    def items(self) -> Iterator[tuple[str, str]]:
        """Every stat rendered as (key, value text), sorted by key."""
        ...

    def close(self) -> None: ...


def open_backend(name: str, path: str | None = None,
                 retention: Retention | None = None) -> StatBackend:
    if name == "ramstat":
        return RamStat()
    if name == "persistent":
        if path is None:
            raise ValueError("the persistent stat backend needs a path")
        return PersistentStat(path, retention)
    raise ValueError(f"unknown stat backend {name!r} (accepted: ramstat, persistent)")
