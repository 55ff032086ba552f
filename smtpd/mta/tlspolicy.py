"""Outbound TLS policy of one MX delivery: which published policy applies
(``relay tls-policy``), and what it demands of each MX host.

    planner = TlsPlanner(resolver, sts=MtaSts(resolver), log=log.info)
    targets, hosts = await planner.plan(RelayTlsPolicy.BOTH, "example.org", targets)
    config = hosts[target.host].apply(config) if target.host in hosts else config

DANE (RFC 7672) wins over MTA-STS for a host with DNSSEC-validated TLSA
records (RFC 8461 §2).  DANE: TLS mandatory, the chain must match a usable
record (or, with only unusable records, TLS is still mandatory, §2.2).
MTA-STS enforce: only MX hosts the policy names, STARTTLS mandatory, the
certificate verified for the MX name (§4); none left is a temporary
failure.  MTA-STS testing: delivery as before, failures only logged (§5).
Smarthost routes (``relay host``) are not planned: the policies describe
a domain's MX hosts.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import dns.asyncresolver
from cryptography import x509
from cryptography.x509 import verification

from smtpd.config.model import RelayTlsPolicy
from smtpd.lookup.mx import RouteError
from smtpd.mta.connect import Target
from smtpd.mta.dane import (
    Tlsa,
    TlsaState,
    host_secure,
    lookup_tlsa,
    mx_secure,
    policy_builder,
    secure_resolver,
    verify_chain,
)
from smtpd.mta.mtasts import Mode, MtaSts
from smtpd.mta.transfer import SessionConfig, Status, TlsCheck, TlsPolicy


class HostMode(enum.Enum):
    DANE = "dane"  # usable TLSA records: TLS and a matching chain
    DANE_TLS = "dane-tls"  # TLSA records, none usable: TLS, unauthenticated
    STS_ENFORCE = "mta-sts-enforce"
    STS_TESTING = "mta-sts-testing"


@dataclass(frozen=True)
class HostTls:
    mode: HostMode
    records: tuple[Tlsa, ...] = ()
    names: tuple[str, ...] = ()  # reference identifiers: MX host, then domain
    ca_file: str | None = None
    soft_check: Callable[[list[bytes]], str | None] | None = field(default=None, compare=False)
    report: Callable[[str], None] | None = field(default=None, compare=False)

    def apply(self, config: SessionConfig) -> SessionConfig:
        """``config`` of a session to this host, made to honour the policy."""
        if self.mode is HostMode.DANE:
            check = TlsCheck(functools.partial(verify_chain, records=self.records,
                                               names=self.names), what="DANE")
            return dataclasses.replace(config, tls=TlsPolicy.STARTTLS, verify=False,
                                       tls_check=check)
        if self.mode is HostMode.DANE_TLS:
            return dataclasses.replace(config, tls=TlsPolicy.STARTTLS, verify=False,
                                       tls_check=None)
        if self.mode is HostMode.STS_ENFORCE:
            return dataclasses.replace(config, tls=TlsPolicy.STARTTLS, verify=True,
                                       ca_file=self.ca_file or config.ca_file, tls_check=None)
        if self.soft_check is None:
            return config
        return dataclasses.replace(config, tls_check=TlsCheck(
            self.soft_check, soft=True, report=self.report, what="MTA-STS (testing)"))


def load_store(ca_file: str | None) -> verification.Store:
    """The PKIX trust anchors: ``ca_file`` or the system bundle."""
    path = ca_file or ssl.get_default_verify_paths().cafile
    if path is None:
        raise OSError("no CA bundle")
    with open(path, "rb") as f:
        return verification.Store(x509.load_pem_x509_certificates(f.read()))


def pkix_verify(chain: list[bytes], *, store: verification.Store, name: str) -> str | None:
    """What ssl's verified handshake would say, on a chain already
    received without verification (MTA-STS testing mode)."""
    if not chain:
        return "no peer certificate"
    try:
        certs = [x509.load_der_x509_certificate(c) for c in chain]
        verifier = policy_builder(store).build_server_verifier(x509.DNSName(name))
        verifier.verify(certs[0], certs[1:])
    except (verification.VerificationError, ValueError) as exc:
        return f"certificate not valid for {name}: {exc}"
    except Exception as exc:  # hostile input: any library error
        return f"unusable peer certificate: {type(exc).__name__}"
    return None


_TLS_REQUIRED_NO = re.compile(rb"(?im)^tls-required[ \t]*:[ \t\r\n]*no[ \t]*\r?$")


def tls_required_no(message: BinaryIO, limit: int = 65536) -> bool:
    """Does the message's header say ``TLS-Required: No`` (RFC 8689 §5)?
    Reads the first ``limit`` bytes, leaves the position where it was."""
    pos = message.tell()
    try:
        message.seek(0)
        head = message.read(limit)
    finally:
        message.seek(pos)
    end = min((i for i in (head.find(b"\n\n"), head.find(b"\r\n\r\n")) if i >= 0),
              default=len(head))
    return _TLS_REQUIRED_NO.search(head[:end]) is not None


class TlsPlanner:
    """Per-destination TLS decisions of the smtp process (one instance)."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, *, sts: MtaSts | None = None,
                 dnssec: dns.asyncresolver.Resolver | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.sts = sts
        self.dnssec = dnssec or secure_resolver(resolver)
        self._log = log or (lambda line: None)
        self._store: verification.Store | None = None

    def _pkix(self, name: str) -> Callable[[list[bytes]], str | None] | None:
        if self._store is None:
            try:
                self._store = load_store(self.sts.ca_file if self.sts else None)
            except (OSError, ValueError) as exc:
                self._log(f"smtp-out: MTA-STS testing: no CA bundle: {exc}")
                return None
        return functools.partial(pkix_verify, store=self._store, name=name)

    async def plan(self, select: RelayTlsPolicy, domain: str, targets: Sequence[Target],
                   ) -> tuple[list[Target], dict[str, HostTls]]:
        """The targets still allowed, in order, and what each host demands.
        RouteError (temporary) when the policy leaves no host."""
        domain = domain.lower().rstrip(".")
        hosts: dict[str, int] = {}
        for t in targets:
            hosts.setdefault(t.host, t.port)
        plan: dict[str, HostTls] = {}
        drop: set[str] = set()
        why = ""
        if (select in (RelayTlsPolicy.DANE, RelayTlsPolicy.BOTH)
                and await mx_secure(self.dnssec, domain)):
            for host, port in hosts.items():
                if host.startswith("[") or not await host_secure(self.dnssec, host):
                    continue  # an address literal or insecure addresses: no DANE
                found = await lookup_tlsa(self.dnssec, host, port)
                if found.state is TlsaState.FAILED:
                    # RFC 7672 §2.2: a failed TLSA lookup makes the host unusable
                    drop.add(host)
                    why = "451 4.7.5 TLSA lookup failed for the MX hosts of " + domain
                    self._log(f"smtp-out: DANE: TLSA lookup for {host} failed, "
                              "host skipped")
                elif found.state is TlsaState.SECURE:
                    mode = HostMode.DANE if found.usable else HostMode.DANE_TLS
                    plan[host] = HostTls(mode, found.usable, (host, domain))
        if (select in (RelayTlsPolicy.MTA_STS, RelayTlsPolicy.BOTH) and self.sts is not None
                and len(plan) + len(drop) < len(hosts)):
            policy = await self.sts.policy(domain)
            if policy is not None and policy.mode is not Mode.NONE:
                for host in hosts:
                    if host in plan or host in drop:
                        continue
                    match = policy.matches(host)
                    if policy.mode is Mode.ENFORCE:
                        if not match:
                            # RFC 8461 §4.2: not a valid MX for this policy
                            drop.add(host)
                            why = (f"451 4.7.5 MTA-STS policy of {domain} matches "
                                   "no usable MX host")
                            self._log(f"smtp-out: MTA-STS: {host} not in the policy of "
                                      f"{domain}, host skipped")
                            continue
                        plan[host] = HostTls(HostMode.STS_ENFORCE, names=(host,),
                                             ca_file=self.sts.ca_file)
                    else:
                        if not match:
                            self._log(f"smtp-out: MTA-STS (testing): {host} not in the "
                                      f"policy of {domain}")
                        plan[host] = HostTls(HostMode.STS_TESTING, names=(host,),
                                             soft_check=self._pkix(host), report=self._report)
        kept = [t for t in targets if t.host not in drop]
        if not kept:
            raise RouteError(Status.TEMPFAIL, why or f"451 4.7.5 No usable MX host for {domain}")
        return kept, plan

    def _report(self, text: str) -> None:
        self._log(f"smtp-out: {text}")
