"""Routes to sessions: MX targets tried in order, relay hosts, loops, logs."""

from __future__ import annotations

import asyncio
import io

import pytest

from smtpd.config.model import RelayOptions
from smtpd.config.parse_action import parse_relay_url
from smtpd.lookup.dns import make_resolver
from smtpd.lookup.mx import LOOP, RouteError
from smtpd.mta import logfmt
from smtpd.mta.connect import Target, open_session, scheme, targets_for
from smtpd.mta.routing import route_for
from smtpd.mta.transfer import Recipient, SessionError, Status, Timeouts
from tests.mta.dnsstub import StubDns
from tests.mta.sink import Sink, SinkConfig

FAST = Timeouts(connect=2, greeting=2, helo=2, mail=2, rcpt=2, data_init=2, data_block=2,
                data_end=2, quit=1)
RECORDS = {
    ("dest.test.", "MX"): ["10 dead.dest.test.", "20 live.dest.test."],
    ("dead.dest.test.", "A"): ["127.0.0.2"],
    ("live.dest.test.", "A"): ["127.0.0.1"],
}


def test_mx_targets_fall_through_to_a_live_host() -> None:
    dns = StubDns(RECORDS)
    sink = Sink(SinkConfig())
    tried: list[Target] = []

    async def main() -> Status:
        port = await sink.start()
        try:
            route = route_for(RelayOptions(), "dest.test", hostname="me.test", tables={})
            targets = await targets_for(route, "dest.test", make_resolver(dns.spec),
                                        mx_port=port)
            assert [(t.host, t.address) for t in targets] == [
                ("dead.dest.test", "127.0.0.2"), ("live.dest.test", "127.0.0.1")]
            session, target = await open_session(route, targets, timeouts=FAST,
                                                 on_connecting=tried.append)
            assert target.host == "live.dest.test"
            result = await session.send("a@me.test", [Recipient(1, "b@dest.test")],
                                        io.BytesIO(b"hi\n"))
            await session.quit()
            return result.results[0].status
        finally:
            await sink.close()
            dns.close()

    assert asyncio.run(main()) is Status.OK
    assert [t.host for t in tried] == ["dead.dest.test", "live.dest.test"]
    assert sink.messages[0].content == b"hi\n"


def test_all_targets_dead() -> None:
    route = route_for(RelayOptions(), "dest.test", hostname="me.test", tables={})
    targets = [Target("x", "127.0.0.2", 9), Target("y", "127.0.0.3", 9)]
    with pytest.raises(SessionError, match=r"^421 4\.4\.1 Connection to y failed"):
        asyncio.run(open_session(route, targets, timeouts=FAST))
    with pytest.raises(SessionError):
        asyncio.run(open_session(route, [], timeouts=FAST))


def test_relay_host_targets_and_loop() -> None:
    dns = StubDns({("smart.test.", "A"): ["192.0.2.5"], ("smart.test.", "AAAA"): ["2001:db8::5"]})
    resolver = make_resolver(dns.spec)
    try:
        url = parse_relay_url("smtp+tls://smart.test:587")
        route = route_for(RelayOptions(host=url), "dest.test", hostname="me.test", tables={})
        targets = asyncio.run(targets_for(route, "dest.test", resolver))
        assert [(t.address, t.port) for t in targets] == [("192.0.2.5", 587),
                                                          ("2001:db8::5", 587)]
        assert scheme(route) == "smtp+tls://"
        loop_route = route_for(RelayOptions(host=parse_relay_url("127.0.0.1:2525")),
                               "dest.test", hostname="me.test", tables={})
        with pytest.raises(RouteError) as info:
            asyncio.run(targets_for(loop_route, "dest.test", resolver,
                                    listeners=[("127.0.0.1", 2525)]))
        assert (info.value.status, info.value.text) == (Status.PERMFAIL, LOOP)
        lh = route_for(RelayOptions(host=parse_relay_url("lmtp://localhost:24")),
                       "dest.test", hostname="me.test", tables={})
        assert asyncio.run(targets_for(lh, "d", resolver))[0].address == "127.0.0.1"
        assert scheme(lh) == "lmtp://"
        assert sorted(dns.queries) == ["smart.test. A", "smart.test. AAAA"]
    finally:
        dns.close()


def test_log_lines() -> None:
    assert logfmt.duration_text(0) == "0s"
    assert logfmt.duration_text(3725) == "1h2m5s"
    assert logfmt.duration_text(86400 + 60) == "1d1m"
    assert logfmt.connecting_line(0xAB, "smtp://", "2001:db8::1", 25, "mx.test") == (
        "00000000000000ab mta connecting address=smtp://[2001:db8::1]:25 host=mx.test")
    line = logfmt.delivery_line(1, 0x1234, "a@b.test", "c@d.test", None, "192.0.2.9",
                                logfmt.address_text("192.0.2.1", 25), 65, Status.TEMPFAIL,
                                "450 4.2.0 busy")
    assert line == ('0000000000000001 mta delivery evpid=0000000000001234 from=<a@b.test> '
                    'to=<c@d.test> rcpt=<-> source="192.0.2.9" relay="192.0.2.1:25" '
                    'delay=1m5s result="TempFail" stat="450 4.2.0 busy"')
