"""ramstat: stats kept in control's memory, as upstream's default backend."""

from __future__ import annotations

from collections.abc import Iterator

from smtpd.stat.kinds import Histogram, StatKind, StatOp, StatUpdate


class RamStat:
    def __init__(self) -> None:
        self._kinds: dict[str, StatKind] = {}
        self._values: dict[str, int] = {}
        self._histograms: dict[str, Histogram] = {}

    def apply(self, updates: list[StatUpdate], now_ns: int) -> None:
        for u in updates:
            self._kinds[u.key] = u.kind
            if u.kind is StatKind.HISTOGRAM:
                assert isinstance(u.value, tuple)
                if u.op is StatOp.SET:
                    self._histograms[u.key] = Histogram.from_wire(u.value)
                else:
                    self._histograms.setdefault(u.key, Histogram()).merge(u.value)
                continue
            assert isinstance(u.value, int)
            if u.op is StatOp.INCREMENT:
                self._values[u.key] = self._values.get(u.key, 0) + u.value
            else:
                self._values[u.key] = u.value

    def raw(self) -> dict[str, tuple[StatKind, int | Histogram]]:
        out: dict[str, tuple[StatKind, int | Histogram]] = {}
        for key, kind in self._kinds.items():
            if kind is StatKind.HISTOGRAM:
                out[key] = (kind, self._histograms[key])
            else:
                out[key] = (kind, self._values[key])
        return out

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(render(self.raw()))

    def close(self) -> None:
        pass


def render(raw: dict[str, tuple[StatKind, int | Histogram]]) -> list[tuple[str, str]]:
    """key=value lines as `smtpctl show stats` prints them, sorted by key."""
    lines: list[tuple[str, str]] = []
    for key, (kind, value) in raw.items():
        if isinstance(value, Histogram):
            lines += [
                (f"{key}.count", str(value.count)),
                (f"{key}.total_ns", str(value.total_ns)),
                (f"{key}.max_ns", str(value.max_ns)),
                (f"{key}.p50_ns", str(value.percentile_ns(0.5))),
                (f"{key}.p99_ns", str(value.percentile_ns(0.99))),
            ]
        elif kind is StatKind.DURATION:
            lines.append((key, f"{value / 1e9:.6f}s"))
        else:
            lines.append((key, str(value)))
    lines.sort()
    return lines
