"""Relayer limits and back-off: sessions per host and per domain, waiting for
a slot, idle sessions given up for a waiter, hosts avoided after failures
(doubling intervals on an injected clock), smtpctl views and mta.* gauges."""

from __future__ import annotations

import asyncio
import io
import socket

from smtpd.config.model import RelayOptions
from smtpd.config.parse_action import parse_relay_url
from smtpd.lookup.dns import make_resolver
from smtpd.mta.registry import HOSTSTAT_EXPIRE, HostStat, Limits, Registry
from smtpd.mta.relay import BACKOFF, Relayer
from smtpd.mta.routing import Route, route_for
from smtpd.mta.transfer import Status, Timeouts, TlsPolicy, TransferResult
from smtpd.mta.views import relay_text
from smtpd.queue.envelope import DeliveryType, Envelope
from smtpd.stat.collector import StatCollector
from smtpd.stat.kinds import StatOp
from tests.mta.dnsstub import StubDns
from tests.mta.sink import Sink, SinkConfig

FAST = Timeouts(connect=2, greeting=2, helo=2, mail=2, rcpt=2, data_init=2, data_block=2,
                data_end=2, rset=2, quit=1)
NO_DNS = "127.0.0.1:9"  # smarthost routes by address never ask


def env(n: int, dest: str) -> Envelope:
    return Envelope(evpid=(0x51E7B466 << 32) | n, type=DeliveryType.MTA, dispatcher="relay",
                    sender="a@src.test", rcpt=dest, dest=dest, ctime=1, ttl=100)


def smarthost(port: int) -> Route:
    url = parse_relay_url(f"smtp://127.0.0.1:{port}")
    return route_for(RelayOptions(host=url), "x", hostname="me.test", tables={})


def dead_port() -> int:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_backoff_intervals_double_up_to_the_maximum() -> None:
    limits = Limits(backoff_base=60, backoff_max=3600)
    assert [limits.backoff(n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600,
                                                          3600]
    assert limits.backoff(10_000) == 3600


def test_relay_text_is_upstreams() -> None:
    mx = route_for(RelayOptions(), "dest.test", hostname="me.test", tables={})
    assert relay_text(mx, "dest.test") == "[relay:dest.test,smtp,heloname=me.test]"
    smart = Route(relay=parse_relay_url("smtp+tls://lbl@smart.test:587"), helo="me.test",
                  tls=TlsPolicy.STARTTLS, verify=True)
    assert relay_text(smart, "dest.test") == (
        "[relay:smart.test,port=587,smtp+tls,auth=lbl,mx,heloname=me.test]")


def test_host_limit_waits_then_takes_the_idle_sessions_slot() -> None:
    dns = StubDns({("a.test.", "MX"): ["10 mx.test."], ("b.test.", "MX"): ["10 mx.test."],
                   ("mx.test.", "A"): ["127.0.0.1"]})
    sink = Sink(SinkConfig(delays={".": 0.3}))
    seen: list[str] = []

    async def main() -> list[TransferResult]:
        port = await sink.start()
        relayer = Relayer(make_resolver(dns.spec), timeouts=FAST, idle=5, mx_port=port,
                          limits=Limits(max_conn_per_host=1))
        route = route_for(RelayOptions(), "x", hostname="me.test", tables={})
        try:
            first = asyncio.create_task(relayer.relay(route, "a.test", [env(1, "x@a.test")],
                                                      io.BytesIO(b"one\n")))
            second = asyncio.create_task(relayer.relay(route, "b.test", [env(2, "y@b.test")],
                                                       io.BytesIO(b"two\n")))
            await asyncio.sleep(0.15)
            seen.extend(relayer.show_relays())
            results = [await first, await second]
            await relayer.close()
            return results
        finally:
            await sink.close()
            dns.close()

    results = asyncio.run(main())
    assert [r.results[0].status for r in results] == [Status.OK, Status.OK]
    # MX sessions serve one domain: a.test's idle session was closed so that
    # b.test could connect, one session at a time
    assert sink.max_active == 1 and sink.connections == 2
    assert sorted(m.content for m in sink.messages) == [b"one\n", b"two\n"]
    assert seen == [
        "[relay:a.test,smtp,heloname=me.test] refcount=2 ntask=1 nconn=1 lastconn=0s "
        "timeout=- wait=",
        "  connector [] refcount=2 nconn=1 lastconn=0s timeout=- flags=",
        "[relay:b.test,smtp,heloname=me.test] refcount=1 ntask=1 nconn=0 lastconn=- "
        "timeout=- wait=LIMIT_HOST",
        "  connector [] refcount=1 nconn=0 lastconn=- timeout=- flags=LIMIT_HOST"], seen


def test_smarthost_sessions_carry_mail_for_every_domain() -> None:
    sink = Sink()

    async def main() -> None:
        port = await sink.start()
        relayer = Relayer(make_resolver(NO_DNS), timeouts=FAST, idle=5)
        for n, domain in enumerate(("a.test", "b.test", "c.test"), 1):
            r = await relayer.relay(smarthost(port), domain, [env(n, f"u@{domain}")],
                                    io.BytesIO(b"x\n"))
            assert r.results[0].status is Status.OK
        assert len(relayer.show_relays()) == 2  # one relay, one connector
        await relayer.close()
        await sink.close()

    asyncio.run(main())
    assert sink.connections == 1 and len(sink.messages) == 3


def test_domain_limit_reuses_the_session_instead_of_opening_another() -> None:
    sink = Sink(SinkConfig(delays={".": 0.2}))
    gauges: dict[str, int] = {}
    during: dict[str, int] = {}

    async def main() -> list[TransferResult]:
        port = await sink.start()
        relayer = Relayer(make_resolver(NO_DNS), timeouts=FAST, idle=5,
                          limits=Limits(max_conn_per_domain=1), stat=gauges.__setitem__)
        assert set(gauges.values()) == {0} and len(gauges) == 7
        route = smarthost(port)
        try:
            results = await asyncio.gather(*(
                relayer.relay(route, "a.test", [env(n, f"u{n}@a.test")],
                              io.BytesIO(b"m%d\n" % n)) for n in range(1, 4)))
            during.update(gauges)
            await relayer.close()
            return list(results)
        finally:
            await sink.close()

    results = asyncio.run(main())
    assert all(r.results[0].status is Status.OK for r in results)
    assert sink.connections == 1 and len(sink.messages) == 3
    assert during == {"mta.session": 1, "mta.host": 1, "mta.relay": 1, "mta.route": 1,
                      "mta.domain": 1, "mta.connector": 1, "mta.source": 1}
    assert set(gauges.values()) == {0}  # nothing live once closed


def test_dead_host_backs_off_doubling_and_recovers() -> None:
    now = [1_000_000.0]
    lines: list[str] = []
    port = dead_port()
    sink = Sink()

    async def main() -> None:
        relayer = Relayer(make_resolver(NO_DNS), timeouts=FAST, idle=0.05, log=lines.append,
                          limits=Limits(backoff_base=60, backoff_max=100),
                          clock=lambda: now[0])
        route = smarthost(port)

        async def send(n: int) -> tuple[Status, str]:
            r = await relayer.relay(route, "a.test", [env(n, f"u{n}@a.test")],
                                    io.BytesIO(b"hi\n"))
            return r.results[0].status, r.results[0].text

        status, text = await send(1)
        assert status is Status.TEMPFAIL
        assert text.startswith("421 4.4.1 Connection to 127.0.0.1 failed")
        host = relayer.registry.hosts[("127.0.0.1", port)]
        assert host.backoff_until == now[0] + 60
        assert any(f"smtp-out: Disabling route [] <-> 127.0.0.1:{port} (127.0.0.1) for 60s"
                   == ln for ln in lines)
        # backed off: fails at once, without a connection attempt
        attempts = sum(" mta connecting " in ln for ln in lines)
        assert await send(2) == (Status.TEMPFAIL, BACKOFF)
        assert sum(" mta connecting " in ln for ln in lines) == attempts
        assert relayer.show_routes() == [
            f"1. [] <-> 127.0.0.1:{port} (127.0.0.1) ND-- nconn=0 nerror=1 penalty=1 "
            "timeout=1m"]
        (hostline,) = relayer.show_hosts()
        assert hostline.startswith(f"127.0.0.1:{port} 127.0.0.1 refcount=0 nconn=0 ")
        assert " connections=0 failures=1 backoff=1m error=\"421 4.4.1 Connection" in hostline
        assert relayer.show_hoststats() == [f"a.test|{int(now[0])}|{BACKOFF}"]
        # the interval ends: one more try, which fails, and the interval doubles (capped)
        now[0] += 60
        assert (await send(3))[0] is Status.TEMPFAIL
        assert host.backoff_until == now[0] + 100 and host.consecutive == 2
        # the host comes back: the next try after the interval delivers and resets
        now[0] += 100
        await sink.start(port)
        assert await send(4) == (Status.OK, "250 2.0.0 queued")
        assert (host.consecutive, host.backoff_until, host.connections) == (0, 0.0, 1)
        assert f"smtp-out: Enabling route [] <-> 127.0.0.1:{port} (127.0.0.1)" in lines
        assert relayer.show_hoststats() == [f"a.test|{int(now[0])}|250 2.0.0 queued"]
        assert relayer.show_routes()[0].startswith(f"1. [] <-> 127.0.0.1:{port} (127.0.0.1) "
                                                   "---- nconn=1 nerror=0 penalty=0 ")
        await relayer.close()
        await sink.close()
        # once idle and without failures to remember, nothing is left
        assert relayer.show_hosts() == [] and relayer.show_routes() == []
        assert relayer.show_relays() == []

    asyncio.run(main())


def test_refused_greeting_backs_off_and_mx_skips_the_host() -> None:
    busy = Sink(SinkConfig(greeting=b"421 4.3.2 too busy\r\n"))
    good = Sink()

    async def main() -> tuple[list[str], list[Status]]:
        busy_port = await busy.start()
        port = await good.start()
        lines: list[str] = []
        relayer = Relayer(make_resolver(NO_DNS), timeouts=FAST, idle=5, log=lines.append)
        try:
            r = await relayer.relay(smarthost(busy_port), "a.test", [env(1, "u@a.test")],
                                    io.BytesIO(b"x\n"))
            assert r.results[0].text == "421 4.3.2 too busy (greeting)"
            r = await relayer.relay(smarthost(busy_port), "a.test", [env(2, "u@a.test")],
                                    io.BytesIO(b"x\n"))
            assert r.results[0].text == BACKOFF
            assert busy.connections == 1
            statuses = []
            dns = StubDns({("d1.test.", "MX"): ["10 mx1.test.", "20 mx2.test."],
                           ("d2.test.", "MX"): ["10 mx1.test.", "20 mx2.test."],
                           ("mx1.test.", "A"): ["127.0.0.2"],  # nobody there on that port
                           ("mx2.test.", "A"): ["127.0.0.1"]})
            try:
                mx = Relayer(make_resolver(dns.spec), timeouts=FAST, idle=5, mx_port=port,
                             log=lines.append)
                route = route_for(RelayOptions(), "x", hostname="me.test", tables={})
                for n, domain in enumerate(("d1.test", "d2.test"), 1):
                    r = await mx.relay(route, domain, [env(n, f"u@{domain}")],
                                       io.BytesIO(b"y\n"))
                    statuses.append(r.results[0].status)
                await mx.close()
            finally:
                dns.close()
            await relayer.close()
            return lines, statuses
        finally:
            await busy.close()
            await good.close()

    lines, statuses = asyncio.run(main())
    assert statuses == [Status.OK, Status.OK]
    connecting = [ln.split("host=")[1] for ln in lines if " mta connecting " in ln]
    # d1: mx1 fails and is backed off, mx2 delivers; d2: straight to mx2
    assert connecting == ["127.0.0.1", "mx1.test", "mx2.test", "mx2.test"]


def test_cancelled_transfers_give_their_slots_back() -> None:
    slow_greeting = Sink(SinkConfig(delays={"GREETING": 5}))
    slow_data = Sink(SinkConfig(delays={".": 5}))
    gauges: dict[str, int] = {}

    async def main() -> None:
        relayer = Relayer(make_resolver(NO_DNS), timeouts=FAST, idle=5, stat=gauges.__setitem__,
                          limits=Limits(max_conn_per_host=1))
        for sink in (slow_greeting, slow_data):
            port = await sink.start()
            task = asyncio.create_task(relayer.relay(smarthost(port), "a.test",
                                                     [env(1, "u@a.test")], io.BytesIO(b"x\n")))
            await asyncio.sleep(0.3)
            assert gauges["mta.host"] == 1
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert relayer.show_hosts() == [] and relayer.show_relays() == []
            assert set(gauges.values()) == {0}, gauges
            await sink.close()
        await relayer.close()

    asyncio.run(main())
    # the second was cancelled while waiting for the final reply: it got that far
    assert "DATA" in slow_data.commands and "QUIT" not in slow_data.commands


def test_registry_forgets_old_failures_and_hoststats() -> None:
    limits = Limits(backoff_base=10, backoff_max=100, forget_after=1000)
    reg = Registry(limits)
    relay = reg.relay("k", "[relay:x,smtp]", None)
    host = reg.host("192.0.2.1", 25, "mx.x")
    reg.attempt(relay, "x", host)
    reg.release(relay, "x", host)
    assert reg.failed(relay, host, "421 down", 0.0, backoff=True) == 10
    reg.hoststat("X", "421 down", 0.0)
    reg.prune(500.0)
    assert ("192.0.2.1", 25) in reg.hosts  # still remembered: the next failure doubles
    assert reg.gauges()["mta.host"] == 1
    reg.prune(1000.0)
    assert reg.hosts == {} and reg.routes == {} and reg.relays == {}
    assert reg.hoststats == {"x": HostStat(0.0, "421 down")}  # kept for 4 hours
    reg.prune(HOSTSTAT_EXPIRE)
    assert reg.hoststats == {}
    assert set(reg.gauges().values()) == {0}


def test_gauges_fit_the_processes_stat_collector() -> None:
    """The smtp process passes ``stat=self.stats.set``: upstream's keys arrive
    as set operations (show stats lists them at 0 from the start)."""
    collector = StatCollector(lambda: None)
    Relayer(make_resolver(NO_DNS), stat=collector.set)
    updates = {u.key: (u.op, u.value) for u in collector.drain()}
    assert updates == {k: (StatOp.SET, 0) for k in (
        "mta.session", "mta.host", "mta.relay", "mta.route", "mta.domain", "mta.connector",
        "mta.source")}
