"""The Prometheus listener: a scrape gets the exposition, anything else a
short answer, and a bad or silent client never stops the server."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from smtpd.stat import prometheus
from smtpd.stat.kinds import StatKind


async def ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def scenario() -> list[bytes]:
    sock = prometheus.listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    calls: list[int] = []

    def read() -> tuple[dict[str, tuple[StatKind, int]], int]:
        calls.append(1)
        return {"smtp.session": (StatKind.COUNTER, len(calls))}, 7

    server = prometheus.PrometheusServer(sock, read)  # type: ignore[arg-type]
    await server.start()
    # a client that connects, sends half a request and goes away
    _r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /met")
    await w.drain()
    w.close()
    out = [await ask(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
           await ask(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
           await ask(port, b"GET / HTTP/1.0\r\n" + b"X: " + b"a" * 9000 + b"\r\n\r\n"),
           await ask(port, b"GET /metrics HTTP/1.0\r\n\r\n")]
    server.close()
    return out


def test_scrapes_and_bad_requests() -> None:
    first, post, huge, second = asyncio.run(scenario())
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK") and b"Content-Type: text/plain" in head
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert fams["smtpd_smtp_session"].samples[0].value == 1
    assert fams["smtpd_uptime_seconds"].samples[0].value == 7
    assert post.startswith(b"HTTP/1.0 405 ")
    assert huge == b""  # over the request limit: closed without an answer
    # read again for every scrape: values are current, the server still up
    body2 = second.partition(b"\r\n\r\n")[2].decode()
    assert "smtpd_smtp_session 2.0" in body2
