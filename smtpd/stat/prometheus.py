"""An optional Prometheus text endpoint served by control (`stats prometheus`).

control is chrooted and unprivileged, so the listening TCP socket is opened in
`ControlProcess.build_privileged()` (before the drop: any port works, as for
the control socket's parent-side bind) and served on control's own event loop:
one short GET per scrape, answered from the in-memory stats, never the disk.

Names: `smtpd_<key with . and - as _>` gauges (upstream's counters go down as
well as up, so they are gauges), timestamps in seconds, durations in seconds;
`profiling.imsg.<proc>.<TYPE>` becomes one histogram
`smtpd_imsg_handler_seconds{proc, type}`, other histograms
`smtpd_<key>_seconds`; `imsg.<proc>.<peer>.<field>` becomes
`smtpd_imsg_<field>{proc, peer}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CollectorRegistry,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from smtpd.stat.kinds import HISTOGRAM_BOUNDS_NS, Histogram, StatKind
from smtpd.stat.views import PROFILE_PREFIX

Raw = dict[str, tuple[StatKind, int | Histogram]]
_BAD = re.compile(r"[^a-zA-Z0-9_]")
REQUEST_LIMIT = 8192
REQUEST_TIMEOUT = 5.0


def metric_name(key: str) -> str:
    return "smtpd_" + _BAD.sub("_", key)


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    seen = 0
    buckets = h.buckets or [0] * (len(HISTOGRAM_BOUNDS_NS) + 1)
    for bound, n in zip(HISTOGRAM_BOUNDS_NS, buckets, strict=False):
        seen += n
        out.append((repr(bound / 1e9), float(seen)))
    out.append(("+Inf", float(h.count)))
    return out


class StatsCollector(Collector):
    def __init__(self, read: Callable[[], tuple[Raw, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        raw, uptime = self._read()
        yield from families(raw, uptime)


def families(raw: Raw, uptime: int) -> Iterable[Metric]:
    handlers = HistogramMetricFamily(
        "smtpd_imsg_handler_seconds", "time spent in imsg handlers (smtpctl profile imsg)",
        labels=["proc", "type"])
    channels: dict[str, GaugeMetricFamily] = {}
    out: list[Metric] = [handlers]
    up = GaugeMetricFamily("smtpd_uptime_seconds", "seconds since control started")
    up.add_metric([], float(uptime))
    out.append(up)
    for key, (kind, value) in sorted(raw.items()):
        if isinstance(value, Histogram):
            if key.startswith(PROFILE_PREFIX):
                proc, _, msg = key[len(PROFILE_PREFIX):].partition(".")
                handlers.add_metric([proc, msg], _buckets(value), value.total_ns / 1e9)
            else:
                fam = HistogramMetricFamily(metric_name(key) + "_seconds", key)
                fam.add_metric([], _buckets(value), value.total_ns / 1e9)
                out.append(fam)
            continue
        parts = key.split(".")
        if parts[0] == "imsg" and len(parts) == 4:
            field = parts[3]
            chan = channels.get(field)
            if chan is None:
                chan = channels[field] = GaugeMetricFamily(
                    f"smtpd_imsg_{_BAD.sub('_', field)}", f"imsg channel {field}",
                    labels=["proc", "peer"])
                out.append(chan)
            chan.add_metric([parts[1], parts[2]], float(value))
            continue
        if kind is StatKind.DURATION:
            gauge = GaugeMetricFamily(metric_name(key) + "_seconds", key)
            gauge.add_metric([], value / 1e9)
        else:
            gauge = GaugeMetricFamily(metric_name(key), key)
            gauge.add_metric([], float(value))
        out.append(gauge)
    return out


def exposition(raw: Raw, uptime: int) -> bytes:
    """The text exposition format of every stat, as prometheus_client writes it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(lambda: (raw, uptime)))
    return generate_latest(registry)


def listen(addr: str, port: int) -> socket.socket:
    """Bound and listening, non-blocking: called before the privilege drop."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    sock.listen(16)
    sock.setblocking(False)
    return sock


class PrometheusServer:
    """GET /metrics (or any path) -> the exposition; anything else -> 405."""

    def __init__(self, sock: socket.socket, read: Callable[[], tuple[Raw, int]]) -> None:
        self.sock = sock
        self._read = read
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self.sock,
                                                  limit=REQUEST_LIMIT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A scraper is untrusted network input: bounded, timed out, never fatal.
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            method = head.split(b" ", 1)[0]
            if method not in (b"GET", b"HEAD"):
                writer.write(b"HTTP/1.0 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            else:
                body = exposition(*self._read())
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: " + CONTENT_TYPE_LATEST.encode()
                             + b"\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\nConnection: close\r\n\r\n"
                             + (body if method == b"GET" else b""))
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
