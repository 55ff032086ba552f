"""`smtpctl report [--since D] > report.html`: a page a person looks at.

Everything comes from the running daemon through the control socket (`show
profile`, `show stats`, `show stats --history`), so the report needs the
persistent backend (`stats persistent "PATH"`) for its charts.  The HTML is
self-contained: inline SVG polylines, no script, nothing fetched.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass

from smtpd.stat.views import PROFILE_PREFIX, parse_history_line

Fetch = Callable[[list[str]], tuple[int, list[str]]]
Series = list[tuple[int, float]]

WIDTH, HEIGHT, PAD = 760, 220, 48
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")
BUCKETS = 120
TOP_HANDLERS = 6
THROUGHPUT = (("smtp.message", "accepted"), ("scheduler.delivery.ok", "delivered"),
              ("scheduler.delivery.tempfail", "tempfail"),
              ("scheduler.delivery.permfail", "permfail"))


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    series: tuple[tuple[str, Series], ...]


def step_values(points: list[tuple[int, int]], grid: list[int]) -> list[int]:
    """The value in force at each grid time (a stored value holds until the next)."""
    out, i, value = [], 0, 0
    for t in grid:
        while i < len(points) and points[i][0] <= t:
            value = points[i][1]
            i += 1
        out.append(value)
    return out


def rate(points: list[tuple[int, int]], t0: int, t1: int, scale: float = 1.0) -> Series:
    """Per-second increase of a counter on a grid of BUCKETS steps; a fall (a
    restart set the counter back to zero) counts the new value as the increase."""
    step = max(1, (t1 - t0) // BUCKETS)
    grid = list(range(t0, t1 + 1, step))
    values = step_values(points, grid)
    out: Series = []
    for (ta, va), (tb, vb) in zip(zip(grid, values, strict=True),
                                  zip(grid[1:], values[1:], strict=True), strict=False):
        inc = vb - va if vb >= va else vb
        out.append((tb, inc * scale / (tb - ta)))
    return out


def svg_chart(chart: Chart, t0: int, t1: int) -> str:
    ymax = max((y for _, s in chart.series for _, y in s), default=0.0) or 1.0
    span = max(1, t1 - t0)
    w, h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def x(t: int) -> float:
        return PAD + w * (t - t0) / span

    def y(v: float) -> float:
        return PAD + h * (1 - v / ymax)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'role="img" aria-label="{html.escape(chart.title)}">',
             f'<text x="{PAD}" y="20" font-weight="bold">{html.escape(chart.title)}</text>',
             f'<line x1="{PAD}" y1="{PAD + h}" x2="{PAD + w}" y2="{PAD + h}" stroke="#888"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{PAD + h}" stroke="#888"/>',
             f'<text x="4" y="{PAD + 4}" font-size="11">{ymax:.3g}</text>',
             f'<text x="4" y="{PAD + h}" font-size="11">0 {html.escape(chart.unit)}</text>',
             f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="11">{_clock(t0)}</text>',
             f'<text x="{PAD + w - 60}" y="{HEIGHT - 8}" font-size="11">{_clock(t1)}</text>']
    for n, (name, series) in enumerate(chart.series):
        color = COLORS[n % len(COLORS)]
        pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in series)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                     f'data-series="{html.escape(name)}" points="{pts}"/>')
        parts.append(f'<text x="{PAD + 10 + 190 * (n % 3)}" y="{34 + 12 * (n // 3)}" '
                     f'font-size="11" fill="{color}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _clock(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def history(fetch: Fetch, key: str, since: str) -> list[tuple[int, int]]:
    status, lines = fetch(["show", "stats", "--history", key, "--since", since])
    return [parse_history_line(line) for line in lines] if status == 0 else []


def profiled_keys(fetch: Fetch) -> set[str]:
    """Handlers with a history (from before a restart too) or a current value."""
    _, keys = fetch(["show", "stats", "--history-keys"])
    _, stat_lines = fetch(["show", "stats"])
    names = set(keys) | {line.partition("=")[0] for line in stat_lines}
    return {k[:-len(".total_ns")] for k in names
            if k.startswith(PROFILE_PREFIX) and k.endswith(".total_ns")}


def charts(fetch: Fetch, since: str, since_s: int, now: int) -> list[Chart]:
    t0 = now - since_s
    spent: list[tuple[float, str, Series]] = []
    for key in profiled_keys(fetch):
        # ns of handler time per second / 1e6 = ms of handler time per second
        series = rate(history(fetch, key + ".total_ns", since), t0, now, 1e-6)
        area = sum(v for _, v in series)
        if area > 0:
            spent.append((area, key[len(PROFILE_PREFIX):], series))
    # the busiest handlers over this span, not since the daemon started
    spent.sort(key=lambda item: (-item[0], item[1]))
    busy = [(name, series) for _, name, series in spent[:TOP_HANDLERS]]
    tput = [(label, rate(history(fetch, key, since), t0, now)) for key, label in THROUGHPUT]
    return [Chart("Throughput", "msg/s", tuple(tput)),
            Chart(f"imsg handler time, top {len(busy)} types", "ms/s", tuple(busy))]


def render(fetch: Fetch, since: str, since_s: int, now: int | None = None) -> str:
    now = int(time.time()) if now is None else now
    _, profile = fetch(["show", "profile"])
    body = [svg_chart(c, now - since_s, now) for c in charts(fetch, since, since_s, now)]
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
        f"<title>smtpd report {_clock(now)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}</style>",
        "</head><body>", f"<h1>smtpd report, last {html.escape(since)} to {_clock(now)} UTC</h1>",
        *body, "<h2>smtpctl show profile</h2>",
        "<pre>" + html.escape("\n".join(profile)) + "</pre>", "</body></html>", ""])
