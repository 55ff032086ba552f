"""DANE applied by the Relayer (TLSA over a DNS stub that sets AD), its
precedence over MTA-STS, and REQUIRETLS (RFC 8689) on relay."""

from __future__ import annotations

import asyncio
import hashlib
import io
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from smtpd.config.model import Ca, RelayOptions, RelayTls, RelayTlsPolicy
from smtpd.lookup.dns import make_resolver
from smtpd.mta.mtasts import MtaSts
from smtpd.mta.relay import Relayer
from smtpd.mta.routing import route_for
from smtpd.mta.tlspolicy import TlsPlanner
from smtpd.mta.transfer import Status, Timeouts, TransferResult
from smtpd.queue.envelope import DeliveryType, Envelope, EnvelopeFlag
from tests.mta.dnsstub import StubDns
from tests.mta.sink import Sink, SinkConfig

FAST = Timeouts(connect=2, greeting=2, helo=2, starttls=2, mail=2, rcpt=2, data_init=2,
                data_block=2, data_end=2, rset=2, quit=1)
NO_FLAGS = EnvelopeFlag(0)


@pytest.fixture(scope="module")
def leaf() -> trustme.LeafCert:
    return trustme.CA().issue_cert("mx.dest.test")


def tlsa_of(leaf: trustme.LeafCert) -> str:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    key = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return "3 1 1 " + hashlib.sha256(key).hexdigest()


def tls_ctx(leaf: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


def env(n: int, flags: EnvelopeFlag = NO_FLAGS) -> Envelope:
    return Envelope(evpid=(0x51E7B466 << 32) | n, type=DeliveryType.MTA, dispatcher="relay",
                    sender="a@src.test", rcpt="b@dest.test", dest="b@dest.test", ctime=1,
                    ttl=100, flags=flags)


def relay(sink: Sink, tlsa: str | None, *, secure: bool = True, insecure: tuple[str, ...] = (),
          select: RelayTlsPolicy = RelayTlsPolicy.DANE, tlsa_fail: bool = False,
          flags: EnvelopeFlag = NO_FLAGS,
          message: bytes = b"hi\n") -> tuple[TransferResult, list[str]]:
    lines: list[str] = []

    async def main() -> TransferResult:
        port = await sink.start()
        records = {("dest.test.", "MX"): ["10 mx.dest.test."],
                   ("mx.dest.test.", "A"): ["127.0.0.1"],
                   # an MTA-STS record without a reachable policy server
                   ("_mta-sts.dest.test.", "TXT"): ['"v=STSv1; id=1;"']}
        if tlsa is not None:
            records[(f"_{port}._tcp.mx.dest.test.", "TLSA")] = [tlsa]
        servfail = [f"_{port}._tcp.mx.dest.test."] if tlsa_fail else []
        # AD on every answer (secure), or on all but the ``insecure`` names
        signed: bool | set[str] = secure
        if secure and insecure:
            signed = {name for name, _ in records} - set(insecure)
        dns = StubDns(records, servfail=servfail, secure=signed)
        resolver = make_resolver(dns.spec)
        sts = MtaSts(resolver, port=1, timeout=1, log=lines.append)
        relayer = Relayer(resolver, timeouts=FAST, mx_port=port, log=lines.append,
                          tls=TlsPlanner(resolver, sts=sts, log=lines.append))
        route = route_for(RelayOptions(tls_policy=select), "dest.test", hostname="me.test",
                          tables={})
        try:
            return await relayer.relay(route, "dest.test", [env(1, flags)],
                                       io.BytesIO(message))
        finally:
            await relayer.close()
            await sink.close()
            dns.close()

    return asyncio.run(main()), lines


def test_matching_tlsa_delivers(leaf: trustme.LeafCert) -> None:
    sink = Sink(SinkConfig(tls=tls_ctx(leaf)))
    result, _ = relay(sink, tlsa_of(leaf))
    assert result.results[0].status is Status.OK and sink.tls_sessions == 1


def test_wrong_tlsa_is_a_tempfail(leaf: trustme.LeafCert) -> None:
    sink = Sink(SinkConfig(tls=tls_ctx(leaf)))
    result, _ = relay(sink, "3 1 1 " + "00" * 32)
    r = result.results[0]
    assert r.status is Status.TEMPFAIL and "4.7.5 DANE authentication" in r.text
    assert sink.messages == []


def test_unvalidated_tlsa_is_ignored(leaf: trustme.LeafCert) -> None:
    # the same wrong record without the AD flag: not DNSSEC-validated, so
    # not DANE: delivered with opportunistic TLS
    sink = Sink(SinkConfig(tls=tls_ctx(leaf)))
    result, _ = relay(sink, "3 1 1 " + "00" * 32, secure=False)
    assert result.results[0].status is Status.OK


def test_insecure_address_records_mean_no_dane(leaf: trustme.LeafCert) -> None:
    # MX and TLSA validated, the MX host's A record not (RFC 7672 §2.2.2):
    # the wrong TLSA record is not used, delivery is opportunistic
    sink = Sink(SinkConfig(tls=tls_ctx(leaf)))
    result, _ = relay(sink, "3 1 1 " + "00" * 32, insecure=("mx.dest.test.",))
    assert result.results[0].status is Status.OK


def test_tlsa_lookup_failure_skips_the_host(leaf: trustme.LeafCert) -> None:
    sink = Sink(SinkConfig(tls=tls_ctx(leaf)))
    # SERVFAIL for the TLSA name (RFC 7672 §2.2: the host is not used)
    result, lines = relay(sink, None, tlsa_fail=True)
    r = result.results[0]
    assert r.status is Status.TEMPFAIL and "TLSA lookup failed" in r.text
    assert sink.connections == 0
    assert any("TLSA lookup for mx.dest.test failed" in line for line in lines)


def test_dane_wins_over_mta_sts(leaf: trustme.LeafCert) -> None:
    sink = Sink(SinkConfig(tls=tls_ctx(leaf)))
    result, lines = relay(sink, tlsa_of(leaf), select=RelayTlsPolicy.BOTH)
    assert result.results[0].status is Status.OK
    # every host had DANE: the MTA-STS policy was not even fetched
    assert not any("MTA-STS" in line for line in lines)


def test_requiretls(leaf: trustme.LeafCert) -> None:
    flag = EnvelopeFlag.REQUIRETLS
    # DANE-authenticated peer offering REQUIRETLS: sent, with the parameter
    sink = Sink(SinkConfig(tls=tls_ctx(leaf), requiretls=True))
    result, _ = relay(sink, tlsa_of(leaf), flags=flag)
    assert result.results[0].status is Status.OK
    assert sink.messages[0].mail_line.endswith(" REQUIRETLS")
    # a peer that does not offer it: bounced with 5.7.10 (RFC 8689 §5)
    sink = Sink(SinkConfig(tls=tls_ctx(leaf)))
    result, _ = relay(sink, tlsa_of(leaf), flags=flag)
    r = result.results[0]
    assert r.status is Status.PERMFAIL and r.text.startswith("550 5.7.10")
    # unauthenticated (opportunistic) TLS is not enough
    sink = Sink(SinkConfig(tls=tls_ctx(leaf), requiretls=True))
    result, _ = relay(sink, None, select=RelayTlsPolicy.NONE, flags=flag)
    assert result.results[0].status is Status.PERMFAIL and sink.messages == []


def test_tls_required_no_header(leaf: trustme.LeafCert) -> None:
    wrong = "3 1 1 " + "00" * 32
    message = b"Subject: x\nTLS-Required: No\n\nbody\n"
    # RFC 8689 §5: the sender asks that DANE be ignored: delivered
    sink = Sink(SinkConfig(tls=tls_ctx(leaf)))
    result, _ = relay(sink, wrong, message=message)
    assert result.results[0].status is Status.OK and len(sink.messages) == 1
    # in the body it means nothing
    sink = Sink(SinkConfig(tls=tls_ctx(leaf)))
    result, _ = relay(sink, wrong, message=b"Subject: x\n\nTLS-Required: No\n")
    assert result.results[0].status is Status.TEMPFAIL
    # with REQUIRETLS the header is ignored
    sink = Sink(SinkConfig(tls=tls_ctx(leaf), requiretls=True))
    result, _ = relay(sink, wrong, message=message, flags=EnvelopeFlag.REQUIRETLS)
    assert result.results[0].status is Status.TEMPFAIL and sink.messages == []


@pytest.mark.parametrize("second_takes_it", [True, False])
def test_requiretls_tries_every_mx_then_bounces(leaf: trustme.LeafCert,
                                                second_takes_it: bool) -> None:
    # RFC 8689 §4.2.1: a host that cannot take the mail is skipped; when no
    # host can, the mail bounces with 5.7.10
    first = Sink(SinkConfig(tls=tls_ctx(leaf)))
    second = Sink(SinkConfig(tls=tls_ctx(leaf), requiretls=second_takes_it))
    lines: list[str] = []

    async def main() -> TransferResult:
        port = await first.start()
        await second.start(port, host="127.0.0.2")
        tlsa = [tlsa_of(leaf)]
        dns = StubDns({("dest.test.", "MX"): ["10 mx1.dest.test.", "20 mx2.dest.test."],
                       ("mx1.dest.test.", "A"): ["127.0.0.1"],
                       ("mx2.dest.test.", "A"): ["127.0.0.2"],
                       (f"_{port}._tcp.mx1.dest.test.", "TLSA"): tlsa,
                       (f"_{port}._tcp.mx2.dest.test.", "TLSA"): tlsa}, secure=True)
        resolver = make_resolver(dns.spec)
        relayer = Relayer(resolver, timeouts=FAST, mx_port=port, log=lines.append,
                          tls=TlsPlanner(resolver, log=lines.append))
        route = route_for(RelayOptions(tls_policy=RelayTlsPolicy.DANE), "dest.test",
                          hostname="me.test", tables={})
        try:
            return await relayer.relay(route, "dest.test", [env(1, EnvelopeFlag.REQUIRETLS)],
                                       io.BytesIO(b"hi\n"))
        finally:
            await relayer.close()
            await first.close()
            await second.close()
            dns.close()

    r = asyncio.run(main()).results[0]
    assert first.messages == [] and first.connections == 1
    assert any("mx1.dest.test cannot take REQUIRETLS mail" in line for line in lines)
    if second_takes_it:
        assert r.status is Status.OK and len(second.messages) == 1
    else:
        assert r.status is Status.PERMFAIL and r.text == "550 5.7.10 REQUIRETLS support required"
        assert second.messages == [] and second.connections == 1


def test_requiretls_needs_a_validated_mx(tmp_path: Path) -> None:
    # a certificate verified for the MX name is not enough when the MX
    # record itself was not validated (RFC 8689 §4.2.1 step 1)
    ca = trustme.CA()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.dest.test").configure_cert(ctx)
    sink = Sink(SinkConfig(tls=ctx, requiretls=True))
    cas = {"c": Ca(name="c", source="t:1", cert=str(ca_path))}

    async def main() -> tuple[TransferResult, TransferResult]:
        port = await sink.start()
        dns = StubDns({("dest.test.", "MX"): ["10 mx.dest.test."],
                       ("mx.dest.test.", "A"): ["127.0.0.1"]})
        relayer = Relayer(make_resolver(dns.spec), timeouts=FAST, mx_port=port)
        route = route_for(RelayOptions(tls=RelayTls.REQUIRE, ca="c"), "dest.test",
                          hostname="me.test", tables={}, cas=cas)
        try:
            plain = await relayer.relay(route, "dest.test", [env(1)], io.BytesIO(b"hi\n"))
            req = await relayer.relay(route, "dest.test", [env(2, EnvelopeFlag.REQUIRETLS)],
                                      io.BytesIO(b"hi\n"))
            return plain, req
        finally:
            await relayer.close()
            await sink.close()
            dns.close()

    plain, req = asyncio.run(main())
    assert plain.results[0].status is Status.OK  # verified TLS works for plain mail
    assert req.results[0].status is Status.PERMFAIL and len(sink.messages) == 1
