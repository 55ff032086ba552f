"""Outbound relay through the real daemon (issue 7): a smarthost, MX routing
against a stub DNS server, per-recipient results, retries and bounces."""

from __future__ import annotations

import asyncio
import email
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon
from tests.mta.dnsstub import StubDns
from tests.mta.sink import Sink, SinkConfig


class ThreadedSink:
    """tests/mta's asyncio sink, served from its own thread and loop."""

    def __init__(self, config: SinkConfig) -> None:
        self.sink = Sink(config)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.sink.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(10)

    @property
    def port(self) -> int:
        return self.sink.port

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sink.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def sink() -> Iterator[ThreadedSink]:
    s = ThreadedSink(SinkConfig(rcpt_replies={
        "temp@remote.test": b"450 4.2.0 try later\r\n",
        "gone@remote.test": b"550 5.1.1 no such user here\r\n"}))
    yield s
    s.close()


def wait_for(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def relay_config(workdir: Path, relay: str) -> str:
    return (f"listen on 127.0.0.1 port {free_port()}\n"
            f'action "local" maildir "{workdir}/mail/%{{user.username}}"\n'
            f'action "out" relay {relay}\n'
            'match from any for local action "local"\n'
            'match from local for any action "out"\n')


def test_smarthost_per_recipient_results_and_bounce(workdir: Path,
                                                    sink: ThreadedSink) -> None:
    d = Daemon(workdir, relay_config(workdir, f"host smtp://127.0.0.1:{sink.port}")).start()
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.sendmail("root@localhost",
                       ["ok1@remote.test", "ok2@remote.test", "temp@remote.test",
                        "gone@remote.test"],
                       b"Subject: outbound\r\n\r\nline\r\n.dot line\r\n")
        wait_for(lambda: len(sink.sink.messages) >= 1)
        got = sink.sink.messages[0]
        assert got.sender == "root@localhost"
        assert sorted(got.recipients) == ["ok1@remote.test", "ok2@remote.test"]
        assert b"\r\n..dot line\r\n" in got.wire          # dot-stuffed on the wire
        assert b"Received: from " in got.wire
        d.wait_for(r"mta delivery .*to=<ok1@remote.test>.*result=\"?Ok")
        # 550 -> a bounce to the local sender, with the remote's reply in it
        bounce_dir = workdir / "mail" / "root" / "new"
        wait_for(lambda: bounce_dir.exists() and any(bounce_dir.iterdir()))
        dsn = email.message_from_bytes(next(bounce_dir.iterdir()).read_bytes())
        assert dsn["Subject"] == "Delivery status notification: failed"
        text = dsn.as_string()
        assert "gone@remote.test" in text and "550 5.1.1 no such user here" in text
        # 450 -> still queued, retry counted, the remote's text kept
        def queued() -> list[str]:
            return d.smtpctl("show", "queue").stdout.splitlines()
        wait_for(lambda: any("|temp@remote.test|" in line and "|1|" in line
                             for line in queued()))
        line = next(x for x in queued() if "|temp@remote.test|" in x)
        assert line.split("|")[2] == "mta" and "450 4.2.0 try later" in line
    finally:
        d.kill_group()


def test_mx_routing_with_stub_dns(workdir: Path, sink: ThreadedSink) -> None:
    dns = StubDns({("remote.test.", "MX"): ["10 mx1.remote.test.", "20 mx2.remote.test."],
                   ("mx1.remote.test.", "A"): ["127.0.0.1"],
                   ("nullmx.test.", "MX"): ["0 ."]})
    d = Daemon(workdir, relay_config(workdir, ""),
               env={"PYSMTPD_RESOLVER": dns.spec, "PYSMTPD_MX_PORT": str(sink.port)})
    d.start()
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.sendmail("root@localhost", ["ok@remote.test", "x@nullmx.test"],
                       b"Subject: via mx\r\n\r\nhello\r\n")
        wait_for(lambda: len(sink.sink.messages) >= 1)
        assert sink.sink.messages[0].recipients == ["ok@remote.test"]
        assert "remote.test. MX" in " ".join(dns.queries)
        # null MX (RFC 7505): bounced at once, never retried
        bounce_dir = workdir / "mail" / "root" / "new"
        wait_for(lambda: bounce_dir.exists() and any(bounce_dir.iterdir()))
        text = next(bounce_dir.iterdir()).read_text()
        assert "x@nullmx.test" in text and "5.1.10" in text
    finally:
        d.kill_group()
        dns.close()


def test_relay_rate_per_destination_domain(workdir: Path, sink: ThreadedSink) -> None:
    """`smtp rate relay N per D`: at most N recipients of a domain are relayed
    per window; the rest stay queued with a 4xx and are retried later."""
    conf = "smtp rate relay 2 per 1h\n" + relay_config(
        workdir, f"host smtp://127.0.0.1:{sink.port}")
    d = Daemon(workdir, conf).start()
    try:
        for n in range(3):
            with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
                s.sendmail("root@localhost", [f"ok{n}@remote.test"],
                           f"Subject: rate {n}\r\n\r\nx\r\n".encode())
        d.wait_for(r"mta: rate-limit kind=relay key=domain:remote.test")
        wait_for(lambda: len(sink.sink.messages) >= 2)
        time.sleep(0.5)
        assert len(sink.sink.messages) == 2
        queued = d.smtpctl("show", "queue").stdout.splitlines()
        assert len(queued) == 1 and "451 4.7.1 Rate limit for remote.test" in queued[0]
    finally:
        d.kill_group()


def test_hundreds_of_recipients_relayed_fresh_and_after_a_restart(workdir: Path,
                                                                  sink: ThreadedSink) -> None:
    """A commit, a schedule and a transfer of 450 envelopes each exceed one
    16 KiB imsg (ANY_FRAGMENT, smtpd/node.py) and one schedule frame of 200
    infos (the scheduler checks each envelope, not its message): every
    recipient is delivered once, from a fresh commit and from the spool."""
    rcpts = [[f"r{m}-{i}@remote.test" for i in range(450)] for m in range(2)]
    conf = relay_config(workdir, f"host smtp://127.0.0.1:{sink.port}")
    d = Daemon(workdir, conf, args=("-P", "mta")).start()
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
            s.sendmail("root@localhost", rcpts[0], b"Subject: many, from the spool\r\n\r\nx\r\n")
        d.wait_for("envelopes loaded from the spool")
    finally:
        d.stop()
    d = Daemon(workdir, conf).start()  # the same spool: loaded at start
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
            s.sendmail("root@localhost", rcpts[1], b"Subject: many, fresh\r\n\r\nx\r\n")

        def delivered() -> list[str]:
            return [r for m in list(sink.sink.messages) for r in m.recipients]
        wait_for(lambda: len(delivered()) >= 900, timeout=60)
        got = delivered()
        assert sorted(got) == sorted(rcpts[0] + rcpts[1])  # each once
        assert d.stats()["scheduler.envelope"] == "0"
    finally:
        d.kill_group()
