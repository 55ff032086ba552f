"""DANE for SMTP (RFC 7672): TLSA records over DNSSEC-validated answers and
the check of a peer's certificate chain against them.

Trust model (as Postfix's ``smtp_dns_support_level = dnssec``): pysmtpd
does not validate DNSSEC itself.  It asks the configured resolver with the
DO bit (and AD, RFC 6840 §5.7) and believes the AD flag of its answers.
The resolver must therefore be a validating resolver the host trusts, on
a path nobody else can touch: 127.0.0.1 (unbound, systemd-resolved with
DNSSEC=yes) or ``PYSMTPD_RESOLVER`` pointing at one.  An answer without AD
is "insecure": no DANE for it.

    dres = secure_resolver(resolver)
    if await mx_secure(dres, "example.org"):
        found = await lookup_tlsa(dres, "mx.example.org", 25)   # TlsaLookup
    error = verify_chain(chain_der, found.records, ["mx.example.org", "example.org"])
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        """RFC 7672 §3.1: only DANE-TA(2) and DANE-EE(3) are used for SMTP;
        selectors 0/1, matching types 0/1/2 (RFC 6698 §2.1)."""
        return self.usage in (2, 3) and self.selector in (0, 1) and self.mtype in (0, 1, 2)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


class TlsaState(enum.Enum):
    NONE = "none"  # no records, or not DNSSEC-validated: no DANE
    SECURE = "secure"  # validated records (maybe none usable)
    FAILED = "failed"  # the lookup failed: the host must not be used (§2.2)


@dataclass(frozen=True)
class TlsaLookup:
    state: TlsaState
    records: tuple[Tlsa, ...] = ()

    @property
    def usable(self) -> tuple[Tlsa, ...]:
        return tuple(r for r in self.records if r.usable)


def secure_resolver(base: dns.asyncresolver.Resolver) -> dns.asyncresolver.Resolver:
    """A copy of ``base`` that asks for DNSSEC data (DO) and the AD bit."""
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = list(base.nameservers)
    res.port = base.port
    res.timeout = base.timeout
    res.lifetime = base.lifetime
    res.use_edns(0, dns.flags.DO, 1232)
    res.flags = dns.flags.RD | dns.flags.AD
    return res


def _authentic(answer: dns.resolver.Answer) -> bool:
    response = answer.response
    return response is not None and bool(response.flags & dns.flags.AD)


async def mx_secure(resolver: dns.asyncresolver.Resolver, domain: str) -> bool:
    """Was the MX RRset (or its absence) DNSSEC-validated?  §2.2.1: DANE
    applies only to MX hosts learnt securely."""
    try:
        answer = await resolver.resolve(domain.rstrip(".") + ".", "MX")
    except dns.resolver.NoAnswer as exc:
        # the implicit MX: the domain itself; secure when the denial is
        response = exc.kwargs.get("response")
        return response is not None and bool(response.flags & dns.flags.AD)
    except dns.exception.DNSException:
        return False
    return _authentic(answer)


async def host_secure(resolver: dns.asyncresolver.Resolver, host: str) -> bool:
    """Are the MX host's address records DNSSEC-validated?  Only then are
    its TLSA records looked up (RFC 7672 §2.2.2); else opportunistic TLS."""
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host.rstrip(".") + ".", rdtype)
        except dns.exception.DNSException:
            continue
        return _authentic(answer)
    return False


async def lookup_tlsa(resolver: dns.asyncresolver.Resolver, host: str,
                      port: int = 25) -> TlsaLookup:
    """TLSA records at ``_<port>._tcp.<host>`` (RFC 7672 §2.2.3)."""
    name = f"_{port}._tcp.{host.rstrip('.')}."
    try:
        answer = await resolver.resolve(name, "TLSA")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return TlsaLookup(TlsaState.NONE)
    except dns.exception.DNSException:
        return TlsaLookup(TlsaState.FAILED)
    if not _authentic(answer):
        return TlsaLookup(TlsaState.NONE)
    records = tuple(Tlsa(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))
                    for r in answer)
    return TlsaLookup(TlsaState.SECURE, records)


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def matches(record: Tlsa, cert: x509.Certificate) -> bool:
    """RFC 6698 §2.1.2-2.1.3: selector 0 = whole certificate, 1 = SPKI;
    matching type 0 = exact, 1 = SHA-256, 2 = SHA-512."""
    data = _selected(cert, record.selector)
    if record.mtype == 1:
        data = hashlib.sha256(data).digest()
    elif record.mtype == 2:
        data = hashlib.sha512(data).digest()
    return data == record.data


def policy_builder(anchors: verification.Store) -> verification.PolicyBuilder:
    """Chain verification as OpenSSL does it for ssl: the CA/Browser Forum
    profile for CAs, but any extensions on the leaf as long as it has a
    subjectAltName to match (cryptography's default refuses, for example,
    a critical SAN with a non-empty subject, which private CAs issue)."""
    ee = verification.ExtensionPolicy.permit_all().require_present(
        x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)
    return verification.PolicyBuilder().store(anchors).extension_policies(
        ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)


def verify_chain(chain: Sequence[bytes], records: Sequence[Tlsa],
                 names: Sequence[str]) -> str | None:
    """``_verify_chain``; whatever the peer's certificates make the X.509
    code raise is a failed check, never an exception in the relay."""
    try:
        return _verify_chain(chain, records, names)
    except Exception as exc:  # hostile input: any library error
        return f"unusable peer certificate: {type(exc).__name__}"


def _verify_chain(chain: Sequence[bytes], records: Sequence[Tlsa],
                  names: Sequence[str]) -> str | None:
    """None when the chain (DER, leaf first, as the peer sent it) matches
    one usable record, else why not.

    DANE-EE(3): the leaf matches; names and dates are not checked (§3.1.1).
    DANE-TA(2): a certificate of the chain matches and the leaf chains up
    to it with a valid signature, dates and a name among ``names`` (the MX
    host, then the next-hop domain: §3.2.2's reference identifiers)."""
    usable = [r for r in records if r.usable]
    if not chain:
        return "no peer certificate"
    if not usable:
        return "no usable TLSA record"
    try:
        certs = [x509.load_der_x509_certificate(c) for c in chain]
    except ValueError:
        return "malformed peer certificate"
    leaf = certs[0]
    if any(r.usage == 3 and matches(r, leaf) for r in usable):
        return None
    anchors = [c for c in certs if any(r.usage == 2 and matches(r, c) for r in usable)]
    if not anchors:
        return "no TLSA record matches the peer certificate chain"
    intermediates = [c for c in certs[1:] if c not in anchors]
    builder = policy_builder(verification.Store(anchors))
    last = "peer certificate does not chain to the TLSA trust anchor"
    for name in names:
        verifier = builder.build_server_verifier(x509.DNSName(name.rstrip(".")))
        try:
            verifier.verify(leaf, intermediates)
        except verification.VerificationError as exc:
            last = f"DANE-TA verification for {name} failed: {exc}"
            continue
        except ValueError as exc:
            last = f"DANE-TA verification failed: {exc}"
            continue
        return None
    return last
