"""Relayer: whole relays with MX routing, connection reuse, idle expiry, logs."""

from __future__ import annotations

import asyncio
import io
import re

from smtpd.config.model import RelayOptions
from smtpd.lookup.dns import make_resolver
from smtpd.mta.relay import Relayer
from smtpd.mta.routing import route_for
from smtpd.mta.transfer import Status, Timeouts, TransferResult
from smtpd.queue.envelope import DeliveryType, Envelope
from tests.mta.dnsstub import StubDns
from tests.mta.sink import Sink, SinkConfig

FAST = Timeouts(connect=2, greeting=2, helo=2, mail=2, rcpt=2, data_init=2, data_block=2,
                data_end=2, rset=2, quit=1)
RECORDS = {
    ("dest.test.", "MX"): ["10 mx.dest.test."],
    ("mx.dest.test.", "A"): ["127.0.0.1"],
    ("null.test.", "MX"): ["0 ."],
    ("dead.test.", "A"): ["127.0.0.2"],
}
MSGID = 0x51E7B466


def env(n: int, dest: str) -> Envelope:
    return Envelope(evpid=(MSGID << 32) | n, type=DeliveryType.MTA, dispatcher="relay",
                    sender="a@src.test", rcpt=dest, dest=dest, ctime=1, ttl=100)


def test_two_messages_share_one_connection_then_idle_expiry() -> None:
    dns = StubDns(RECORDS)
    sink = Sink(SinkConfig(rcpt_replies={"gone@dest.test": b"550 5.1.1 no\r\n"}))
    lines: list[str] = []

    async def main() -> list[TransferResult]:
        port = await sink.start()
        relayer = Relayer(make_resolver(dns.spec), timeouts=FAST, mx_port=port, idle=0.2,
                          log=lines.append)
        r = route_for(RelayOptions(), "dest.test", hostname="me.test", tables={})
        try:
            r1 = await relayer.relay(r, "dest.test", [env(1, "b@dest.test"),
                                                      env(2, "gone@dest.test")],
                                     io.BytesIO(b"one\n"))
            assert relayer.idle_sessions == 1
            r2 = await relayer.relay(r, "dest.test", [env(3, "c@dest.test")],
                                     io.BytesIO(b"two\n"))
            await asyncio.sleep(0.5)  # idle expiry sends QUIT
            assert relayer.idle_sessions == 0
            await relayer.close()
            return [r1, r2]
        finally:
            await sink.close()
            dns.close()

    r1, r2 = asyncio.run(main())
    assert [r.status for r in r1.results] == [Status.OK, Status.PERMFAIL]
    assert [r.status for r in r2.results] == [Status.OK]
    assert sink.connections == 1 and sink.commands[-1] == "QUIT"
    assert [m.content for m in sink.messages] == [b"one\n", b"two\n"]
    assert re.fullmatch(r"[0-9a-f]{16} mta connecting address=smtp://127\.0\.0\.1:\d+ "
                        r"host=mx\.dest\.test", lines[0])
    assert lines[1].endswith(" mta connected")
    delivery = [ln for ln in lines if " mta delivery " in ln]
    assert len(delivery) == 3
    assert 'to=<gone@dest.test>' in delivery[1] and 'result="PermFail"' in delivery[1]
    assert 'stat="550 5.1.1 no"' in delivery[1] and 'source="127.0.0.1"' in delivery[1]
    assert 'relay="mx.dest.test 127.0.0.1:' in delivery[0]


def test_routing_failures_become_results() -> None:
    dns = StubDns(RECORDS)

    async def main() -> tuple[TransferResult, TransferResult]:
        relayer = Relayer(make_resolver(dns.spec), timeouts=FAST, mx_port=9)
        try:
            r = route_for(RelayOptions(), "x", hostname="me.test", tables={})
            null = await relayer.relay(r, "null.test", [env(1, "a@null.test")],
                                       io.BytesIO(b"x\n"))
            dead = await relayer.relay(r, "dead.test", [env(2, "a@dead.test")],
                                       io.BytesIO(b"x\n"))
            await relayer.close()
            return null, dead
        finally:
            dns.close()

    null, dead = asyncio.run(main())
    assert [(r.status, r.text) for r in null.results] == [
        (Status.PERMFAIL, "556 5.1.10 Domain does not accept mail")]
    assert dead.results[0].status is Status.TEMPFAIL
    assert dead.results[0].text.startswith("421 4.4.1 Connection to dead.test failed")
