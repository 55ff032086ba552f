"""smtpctl's relay views through the real daemon: after a delivery the sink
shows in `show relays`, `show routes`, `show hosts` and `show hoststats`; a
dead smarthost is backed off (route flagged D, a back-off time), its mail
stays queued with a 4xx, and the next message fails at once without a
connection attempt."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon
from tests.integration.test_relay import ThreadedSink, relay_config, wait_for
from tests.mta.sink import SinkConfig


@pytest.fixture
def sink() -> Iterator[ThreadedSink]:
    # a slow goodbye keeps the session (and so the views) alive after its
    # idle time, whatever the machine's load
    s = ThreadedSink(SinkConfig(delays={"QUIT": 8}))
    yield s
    s.close()


def send(d: Daemon, rcpt: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.sendmail("root@localhost", [rcpt], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def lines(d: Daemon, *words: str) -> list[str]:
    out = d.smtpctl(*words)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_views_list_the_sink_after_a_delivery(workdir: Path, sink: ThreadedSink) -> None:
    d = Daemon(workdir, relay_config(workdir, f"host smtp://127.0.0.1:{sink.port}")).start()
    try:
        send(d, "ok@remote.test", "views")
        wait_for(lambda: len(sink.sink.messages) == 1)
        d.wait_for(r"mta delivery .*to=<ok@remote.test>.*result=\"Ok\"")
        # the session stays open (idle, then saying QUIT): it is in the views
        relays = lines(d, "show", "relays")
        assert re.match(rf"\[relay:127\.0\.0\.1,port={sink.port},smtp,mx,heloname=\S+\] "
                        r"refcount=1 ntask=0 nconn=1 lastconn=\d+s timeout=- wait=$",
                        relays[0]), relays
        assert relays[1].startswith("  connector [] refcount=1 nconn=1 ")
        routes = lines(d, "show", "routes")
        assert re.fullmatch(rf"\d+\. \[\] <-> 127\.0\.0\.1:{sink.port} \(127\.0\.0\.1\) ---- "
                            r"nconn=1 nerror=0 penalty=0 timeout=-", routes[0]), routes
        hosts = lines(d, "show", "hosts")
        assert hosts[0].startswith(f"127.0.0.1:{sink.port} 127.0.0.1 refcount=1 nconn=1 ")
        assert " connections=1 failures=0 backoff=- " in hosts[0]
        (stat,) = lines(d, "show", "hoststats")
        domain, when, text = stat.split("|")
        assert (domain, text) == ("remote.test", "250 2.0.0 queued") and when.isdigit()
    finally:
        d.kill_group()


def test_dead_smarthost_is_backed_off(workdir: Path) -> None:
    port = free_port()
    d = Daemon(workdir, relay_config(workdir, f"host smtp://127.0.0.1:{port}")).start()
    try:
        send(d, "one@remote.test", "first")

        def queued() -> list[str]:
            return lines(d, "show", "queue")

        wait_for(lambda: any("|one@remote.test|" in x and "|1|" in x for x in queued()))
        line = next(x for x in queued() if "|one@remote.test|" in x)
        assert line.split("|")[2] == "mta"
        assert line.endswith("|421 4.4.1 Connection to 127.0.0.1 failed: Connection refused")
        d.wait_for(r"smtp-out: Disabling route \[\] <-> 127\.0\.0\.1:\d+ .* for 60s")
        (route,) = lines(d, "show", "routes")
        assert re.fullmatch(rf"\d+\. \[\] <-> 127\.0\.0\.1:{port} \(127\.0\.0\.1\) ND-- "
                            r"nconn=0 nerror=1 penalty=1 timeout=(1m|\d+s)", route), route
        (host,) = lines(d, "show", "hosts")
        assert " connections=0 failures=1 backoff=" in host and "backoff=-" not in host
        (stat,) = lines(d, "show", "hoststats")
        assert stat.startswith("remote.test|") and "|421 4.4.1 Connection to" in stat
        # while backed off, the next message fails at once, without connecting
        send(d, "two@remote.test", "second")
        wait_for(lambda: any("|two@remote.test|" in x and "|1|" in x for x in queued()))
        line = next(x for x in queued() if "|two@remote.test|" in x)
        assert line.endswith("|451 4.4.1 Host temporarily unavailable, backing off")
        assert sum(" mta connecting " in x for x in d.lines) == 1
    finally:
        d.kill_group()
