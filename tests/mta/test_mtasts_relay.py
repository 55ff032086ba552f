"""MTA-STS applied by the Relayer: enforce keeps only policy MX hosts with
verified STARTTLS, testing delivers and logs; the per-domain selection
through ``tls-policy`` (word or table)."""

from __future__ import annotations

import asyncio
import io
import ssl

import pytest
import trustme

from smtpd.config.model import RelayOptions, RelayTlsPolicy, TableDef, TableEntryKind
from smtpd.config.parse_action import parse_relay_url
from smtpd.lookup.dns import make_resolver
from smtpd.lookup.mx import RouteError
from smtpd.mta.mtasts import MtaSts
from smtpd.mta.relay import Relayer
from smtpd.mta.routing import route_for
from smtpd.mta.tlspolicy import TlsPlanner
from smtpd.mta.transfer import Status, Timeouts, TransferResult
from smtpd.queue.envelope import DeliveryType, Envelope
from smtpd.table.backend import open_table
from tests.mta.dnsstub import StubDns
from tests.mta.policyserver import PolicyServer, ca, ca_file, server
from tests.mta.sink import Sink, SinkConfig

__all__ = ["ca", "ca_file", "server"]  # fixtures shared with the other MTA-STS tests

FAST = Timeouts(connect=2, greeting=2, helo=2, starttls=2, mail=2, rcpt=2, data_init=2,
                data_block=2, data_end=2, rset=2, quit=1)
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.dest.test\nmax_age: 600\n"


def tls_ctx(ca: trustme.CA, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return ctx


def env(n: int) -> Envelope:
    return Envelope(evpid=(0x51E7B466 << 32) | n, type=DeliveryType.MTA, dispatcher="relay",
                    sender="a@src.test", rcpt="b@dest.test", dest="b@dest.test", ctime=1,
                    ttl=100)


def relay(sink: Sink, server: PolicyServer, ca_file: str, mx: str,
          select: RelayTlsPolicy = RelayTlsPolicy.MTA_STS,
          ) -> tuple[TransferResult, list[str], StubDns]:
    dns = StubDns({("dest.test.", "MX"): [f"10 {mx}."],
                   (f"{mx}.", "A"): ["127.0.0.1"],
                   ("_mta-sts.dest.test.", "TXT"): ['"v=STSv1; id=1;"'],
                   ("mta-sts.dest.test.", "A"): ["127.0.0.1"]})
    lines: list[str] = []

    async def main() -> TransferResult:
        port = await sink.start()
        resolver = make_resolver(dns.spec)
        sts = MtaSts(resolver, port=server.port, ca_file=ca_file, timeout=5, log=lines.append)
        relayer = Relayer(resolver, timeouts=FAST, mx_port=port, log=lines.append,
                          tls=TlsPlanner(resolver, sts=sts, log=lines.append))
        route = route_for(RelayOptions(tls_policy=select), "dest.test", hostname="me.test",
                          tables={})
        try:
            return await relayer.relay(route, "dest.test", [env(1)], io.BytesIO(b"hi\n"))
        finally:
            await relayer.close()
            await sink.close()
            dns.close()

    return asyncio.run(main()), lines, dns


def test_enforce_delivers_over_verified_tls(ca: trustme.CA, ca_file: str,
                                            server: PolicyServer) -> None:
    server.serve(ENFORCE)
    sink = Sink(SinkConfig(tls=tls_ctx(ca, "mx.dest.test")))
    result, lines, _ = relay(sink, server, ca_file, "mx.dest.test")
    assert result.results[0].status is Status.OK
    assert sink.tls_sessions == 1 and len(sink.messages) == 1
    assert any("MTA-STS policy of dest.test id=1 mode=enforce" in line for line in lines)


def test_enforce_skips_mx_hosts_not_in_the_policy(ca: trustme.CA, ca_file: str,
                                                  server: PolicyServer) -> None:
    server.serve(ENFORCE)
    sink = Sink(SinkConfig(tls=tls_ctx(ca, "evil.test")))
    result, lines, _ = relay(sink, server, ca_file, "evil.test")
    r = result.results[0]
    assert r.status is Status.TEMPFAIL and r.text.startswith("451 4.7.5 MTA-STS policy")
    assert sink.connections == 0
    assert any("evil.test not in the policy" in line for line in lines)


@pytest.mark.parametrize(("cert_name", "offer_tls", "error"), [
    ("other.test", True, "TLS handshake failed"),  # certificate for another name
    ("mx.dest.test", False, "4.7.10 TLS required"),  # no STARTTLS: never in clear
])
def test_enforce_fails_without_verified_tls(ca: trustme.CA, ca_file: str, server: PolicyServer,
                                            cert_name: str, offer_tls: bool, error: str) -> None:
    server.serve(ENFORCE)
    sink = Sink(SinkConfig(tls=tls_ctx(ca, cert_name) if offer_tls else None))
    result, _, _ = relay(sink, server, ca_file, "mx.dest.test")
    r = result.results[0]
    assert r.status is Status.TEMPFAIL and error in r.text
    assert sink.messages == []


def test_testing_mode_delivers_and_logs(ca: trustme.CA, ca_file: str,
                                        server: PolicyServer) -> None:
    server.serve(ENFORCE.replace("enforce", "testing"))
    sink = Sink(SinkConfig(tls=tls_ctx(ca, "other.test")))
    result, lines, _ = relay(sink, server, ca_file, "evil.test")
    assert result.results[0].status is Status.OK and sink.tls_sessions == 1
    assert any("MTA-STS (testing): evil.test not in the policy" in line for line in lines)
    assert any("MTA-STS (testing) check of evil.test failed" in line for line in lines)


def test_no_policy_selected_asks_nothing(ca: trustme.CA, ca_file: str,
                                         server: PolicyServer) -> None:
    server.serve(ENFORCE)
    sink = Sink(SinkConfig())
    result, _, dns = relay(sink, server, ca_file, "evil.test", select=RelayTlsPolicy.NONE)
    assert result.results[0].status is Status.OK
    assert not any("_mta-sts" in q for q in dns.queries) and server.requests == []


def test_policy_table_per_domain() -> None:
    table = open_table(TableDef(
        name="pol", backend="static", config=None, source="t:1", kind=TableEntryKind.MAPPING,
        entries=(("dest.test", "mta-sts"), (".sub.test", "DANE"), ("bad.test", "strict"))))
    opts = RelayOptions(tls_policy_table="pol")

    def select(domain: str) -> RelayTlsPolicy:
        return route_for(opts, domain, hostname="me.test", tables={"pol": table}).tls_select

    assert select("dest.test") is RelayTlsPolicy.MTA_STS
    assert select("a.b.sub.test") is RelayTlsPolicy.DANE
    assert select("other.test") is RelayTlsPolicy.NONE
    with pytest.raises(RouteError, match=r"451 4\.3\.0 bad tls-policy"):
        select("bad.test")
    # a smarthost route never plans MX policies
    url = parse_relay_url("smtp://relay.test:2525")
    host = route_for(RelayOptions(tls_policy=RelayTlsPolicy.BOTH, host=url), "dest.test",
                     hostname="me.test", tables={})
    assert host.tls_select is RelayTlsPolicy.NONE
