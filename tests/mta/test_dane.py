"""DANE (RFC 7672): TLSA matching of certificate chains, TLSA lookups that
trust only AD-flagged answers (DNS stub), and sessions that require a
matching chain after STARTTLS."""

from __future__ import annotations

import asyncio
import hashlib
import io
import ssl
from collections.abc import Awaitable, Callable

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from smtpd.lookup.dns import make_resolver
from smtpd.mta.dane import (
    Tlsa,
    TlsaState,
    lookup_tlsa,
    matches,
    mx_secure,
    secure_resolver,
    verify_chain,
)
from smtpd.mta.session import MtaSession
from smtpd.mta.tlspolicy import HostMode, HostTls
from smtpd.mta.transfer import Recipient, SessionConfig, SessionError, Status, Timeouts
from tests.mta.dnsstub import StubDns
from tests.mta.sink import Sink, SinkConfig

FAST = Timeouts(connect=2, greeting=2, helo=2, starttls=2, auth=2, mail=2, rcpt=2,
                data_init=2, data_block=2, data_end=2, rset=2, quit=1)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("mx.dest.test")


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def spki(cert_der: bytes) -> bytes:
    return x509.load_der_x509_certificate(cert_der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def chain_of(ca: trustme.CA, leaf: trustme.LeafCert) -> list[bytes]:
    return [der(leaf.cert_chain_pems[0].bytes()), der(ca.cert_pem.bytes())]


# -- matching ----------------------------------------------------------------------


def test_dane_ee_selectors_and_matching_types(ca: trustme.CA, leaf: trustme.LeafCert) -> None:
    chain = chain_of(ca, leaf)
    cert = x509.load_der_x509_certificate(chain[0])
    key = spki(chain[0])
    for record in (Tlsa(3, 1, 1, hashlib.sha256(key).digest()),
                   Tlsa(3, 0, 1, hashlib.sha256(chain[0]).digest()),
                   Tlsa(3, 1, 2, hashlib.sha512(key).digest()),
                   Tlsa(3, 0, 0, chain[0])):
        assert matches(record, cert)
        # DANE-EE ignores names (RFC 7672 §3.1.1)
        assert verify_chain(chain, [record], ["other.test"]) is None
    wrong = Tlsa(3, 1, 1, hashlib.sha256(b"other key").digest())
    assert verify_chain(chain, [wrong], ["mx.dest.test"]) is not None
    # a DANE-EE record for the CA does not make the leaf acceptable
    ca_rec = Tlsa(3, 0, 1, hashlib.sha256(chain[1]).digest())
    assert verify_chain(chain, [ca_rec], ["mx.dest.test"]) is not None


def test_dane_ta_needs_the_chain_and_the_name(ca: trustme.CA, leaf: trustme.LeafCert) -> None:
    chain = chain_of(ca, leaf)
    ta = Tlsa(2, 1, 1, hashlib.sha256(spki(chain[1])).digest())
    assert verify_chain(chain, [ta], ["mx.dest.test", "dest.test"]) is None
    # the name is checked for DANE-TA (§3.2.2)
    assert "failed" in (verify_chain(chain, [ta], ["other.test"]) or "")
    # a leaf that does not chain to the anchor: another CA's leaf
    other = trustme.CA()
    stranger = [der(other.issue_cert("mx.dest.test").cert_chain_pems[0].bytes()), chain[1]]
    assert verify_chain(stranger, [ta], ["mx.dest.test"]) is not None
    # the anchor is not in the chain the peer sent
    assert verify_chain(chain[:1], [ta], ["mx.dest.test"]) is not None


def test_unusable_records_are_ignored(ca: trustme.CA, leaf: trustme.LeafCert) -> None:
    chain = chain_of(ca, leaf)
    pkix_ee = Tlsa(1, 0, 0, chain[0])  # PKIX-EE(1): not used for SMTP (§3.1.3)
    assert not pkix_ee.usable
    assert verify_chain(chain, [pkix_ee], ["mx.dest.test"]) == "no usable TLSA record"
    assert verify_chain([], [Tlsa(3, 0, 0, chain[0])], []) == "no peer certificate"


# -- lookups -------------------------------------------------------------------------


def tlsa_text(record: Tlsa) -> str:
    return f"{record.usage} {record.selector} {record.mtype} {record.data.hex()}"


def test_tlsa_lookup_trusts_only_ad() -> None:
    rec = Tlsa(3, 1, 1, bytes(range(32)))
    records = {("_25._tcp.mx.dest.test.", "TLSA"): [tlsa_text(rec)],
               ("dest.test.", "MX"): ["10 mx.dest.test."],
               ("_25._tcp.broken.test.", "TLSA"): ["3 1 1 00"]}
    secure = StubDns(records, servfail=["_25._tcp.broken.test."], secure=True)
    insecure = StubDns(records)

    async def main() -> None:
        sres = secure_resolver(make_resolver(secure.spec))
        found = await lookup_tlsa(sres, "mx.dest.test", 25)
        assert found.state is TlsaState.SECURE and found.usable == (rec,)
        assert await mx_secure(sres, "dest.test")
        assert (await lookup_tlsa(sres, "none.test", 25)).state is TlsaState.NONE
        assert (await lookup_tlsa(sres, "broken.test", 25)).state is TlsaState.FAILED
        ires = secure_resolver(make_resolver(insecure.spec))
        # the same records without AD: not DNSSEC-validated, no DANE
        assert (await lookup_tlsa(ires, "mx.dest.test", 25)).state is TlsaState.NONE
        assert not await mx_secure(ires, "dest.test")

    try:
        asyncio.run(main())
    finally:
        secure.close()
        insecure.close()


def test_queries_set_do_and_ad() -> None:
    res = secure_resolver(make_resolver("127.0.0.1:53"))
    assert res.edns == 0 and res.ednsflags & 0x8000  # DO (RFC 3225)
    assert res.flags is not None and res.flags & 0x0020  # AD (RFC 6840 §5.7)


# -- sessions --------------------------------------------------------------------------


@pytest.fixture
def sink_ctx(leaf: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


def run_sink[T](config: SinkConfig, body: Callable[[int], Awaitable[T]]) -> T:
    async def main() -> T:
        sink = Sink(config)
        port = await sink.start()
        try:
            return await body(port)
        finally:
            await sink.close()
    return asyncio.run(main())


def dane(chain_rec: Tlsa) -> HostTls:
    return HostTls(HostMode.DANE, (chain_rec,), ("mx.dest.test", "dest.test"))


def test_session_with_matching_tlsa(sink_ctx: ssl.SSLContext, ca: trustme.CA,
                                    leaf: trustme.LeafCert) -> None:
    key = spki(chain_of(ca, leaf)[0])
    rec = Tlsa(3, 1, 1, hashlib.sha256(key).digest())

    async def body(port: int) -> tuple[bool, bool, Status]:
        cfg = dane(rec).apply(SessionConfig(helo="relay.test", timeouts=FAST))
        s = await MtaSession.open("mx.dest.test", port, cfg, address="127.0.0.1")
        result = await s.send("a@src.test", [Recipient(1, "b@dest.test")],
                              io.BytesIO(b"Subject: x\n\nhi\n"), requiretls=True)
        await s.quit()
        return s.tls_active, s.verified, result.results[0].status

    sink = SinkConfig(tls=sink_ctx, requiretls=True)
    assert run_sink(sink, body) == (True, True, Status.OK)


def test_session_with_wrong_tlsa_fails(sink_ctx: ssl.SSLContext) -> None:
    rec = Tlsa(3, 1, 1, hashlib.sha256(b"not the key").digest())

    async def body(port: int) -> None:
        cfg = dane(rec).apply(SessionConfig(helo="relay.test", timeouts=FAST))
        await MtaSession.open("mx.dest.test", port, cfg, address="127.0.0.1")

    with pytest.raises(SessionError, match=r"4\.7\.5 DANE authentication of mx\.dest\.test"):
        run_sink(SinkConfig(tls=sink_ctx), body)


def test_tlsa_records_make_tls_mandatory() -> None:
    async def body(port: int) -> None:
        cfg = HostTls(HostMode.DANE_TLS).apply(SessionConfig(helo="relay.test", timeouts=FAST))
        await MtaSession.open("mx.dest.test", port, cfg, address="127.0.0.1")

    # no STARTTLS offered: no cleartext delivery
    with pytest.raises(SessionError, match=r"4\.7\.10 TLS required"):
        run_sink(SinkConfig(), body)


def test_garbage_certificates_fail_the_check_without_raising() -> None:
    rec = Tlsa(3, 1, 1, bytes(32))
    assert verify_chain([b"\x30\x03\x02\x01\x00"], [rec], ["mx.dest.test"]) is not None
    assert verify_chain([b"not der at all"], [rec], ["mx.dest.test"]) is not None
