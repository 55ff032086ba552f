"""Next hops of a mail domain with dnspython: MX records, their addresses,
and the routing-loop rule.

RFC 5321 §5.1: MX hosts in preference order, equal preferences in random
order; no MX means the domain itself is the (implicit) MX; a host that is
one of ours and every less preferred one are dropped.  RFC 7505: a single
MX "." says the domain takes no mail.  Failures are ``RouteError`` with a
status (temporary for a DNS server failure, permanent for an answer that
says "no") and a reply-shaped text for the envelope and the bounce.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import dns.asyncresolver
import dns.exception
import dns.resolver

from smtpd.mta.transfer import Status

NULL_MX = "556 5.1.10 Domain does not accept mail"  # RFC 7505 §3, RFC 7504
LOOP = "554 5.4.6 Routing loop detected"  # RFC 3463 §3.5


class RouteError(Exception):
    def __init__(self, status: Status, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class MxHost(NamedTuple):
    preference: int
    host: str  # lower case, no trailing dot; "[192.0.2.1]" for a literal


@dataclass(frozen=True)
class NextHop:
    preference: int
    host: str
    addresses: tuple[str, ...]  # IPv4 first, then IPv6


def _temp(domain: str) -> RouteError:
    return RouteError(Status.TEMPFAIL, f"451 4.4.3 Temporary DNS failure for {domain}")


def _literal(domain: str) -> str | None:
    """The address of a domain literal ``[192.0.2.1]`` / ``[IPv6:...]``."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].upper() == "IPV6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


async def resolve_mx(resolver: dns.asyncresolver.Resolver, domain: str, *,
                     rng: random.Random | None = None) -> list[MxHost]:
    """The MX hosts of ``domain``, most preferred first, equal preferences
    shuffled with ``rng`` (a fresh ``random.Random`` by default)."""
    domain = domain.rstrip(".").lower()
    if _literal(domain) is not None:
        return [MxHost(0, domain)]
    try:
        answer = await resolver.resolve(domain + ".", "MX")
    except dns.resolver.NXDOMAIN as exc:
        raise RouteError(Status.PERMFAIL, f"550 5.1.2 Domain not found: {domain}") from exc
    except dns.resolver.NoAnswer:
        return [MxHost(0, domain)]  # RFC 5321 §5.1: the implicit MX
    except dns.exception.DNSException as exc:  # SERVFAIL, timeout, no nameservers
        raise _temp(domain) from exc
    records = [(int(r.preference), str(r.exchange).rstrip(".").lower()) for r in answer]
    real = [r for r in records if r[1]]
    if not real:
        # RFC 7505 §4.1: MX "." (with no other MX) -> fail without retrying.
        raise RouteError(Status.PERMFAIL, NULL_MX)
    rng = rng or random.Random()
    groups: dict[int, list[str]] = {}
    for pref, host in real:
        groups.setdefault(pref, [])
        if host not in groups[pref]:
            groups[pref].append(host)
    out: list[MxHost] = []
    for pref in sorted(groups):
        # sorted first: answers come in any order, a seeded rng must give
        # one result
        hosts = sorted(groups[pref])
        rng.shuffle(hosts)
        out += [MxHost(pref, h) for h in hosts]
    return out


async def resolve_addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
    """A then AAAA addresses of ``host``; [] when it has none.  RouteError
    (temporary) when the lookups failed and found nothing."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass

    async def query(rdtype: str) -> list[str] | None:
        try:
            answer = await resolver.resolve(host + ".", rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException:
            return None
        return [str(r.address) for r in answer]

    v4, v6 = await asyncio.gather(query("A"), query("AAAA"))
    found = (v4 or []) + (v6 or [])
    if not found and (v4 is None or v6 is None):
        raise _temp(host)
    return found


def is_local_address(address: str) -> bool:
    """Is ``address`` configured on this machine?  (It can be bound.)"""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(ip), 0))
    except OSError:
        return False
    return True


def is_loop(address: str, port: int, listeners: Iterable[tuple[str, int]]) -> bool:
    """Would connecting to ``address:port`` reach one of our own listeners?
    A wildcard listener (0.0.0.0, ::) is every local address on its port."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for laddr, lport in listeners:
        if lport != port:
            continue
        try:
            lip = ipaddress.ip_address(laddr)
        except ValueError:
            continue
        if lip == ip:
            return True
        if lip.is_unspecified and is_local_address(str(ip)):
            return True
    return False


async def resolve_route(resolver: dns.asyncresolver.Resolver, domain: str, *,
                        port: int = 25, listeners: Sequence[tuple[str, int]] = (),
                        backup_mx: str | None = None,
                        rng: random.Random | None = None) -> list[NextHop]:
    """Every usable next hop of ``domain`` in the order to try them.

    ``listeners`` are our own (address, port) pairs: the first MX that is
    us ends the list (RFC 5321 §5.1).  ``backup_mx`` (``relay backup``) is
    our name as an MX of the domain: only more preferred hosts are kept.
    """
    mxs = await resolve_mx(resolver, domain, rng=rng)
    implicit = len(mxs) == 1 and mxs[0].host == domain.rstrip(".").lower()
    if backup_mx is not None:
        name = backup_mx.rstrip(".").lower()
        ours = [m.preference for m in mxs if m.host == name]
        if ours:
            mxs = [m for m in mxs if m.preference < min(ours)]
            if not mxs:
                raise RouteError(Status.PERMFAIL, LOOP)
    hops: list[NextHop] = []
    temp = False
    for mx in mxs:
        try:
            addresses = await resolve_addresses(resolver, mx.host)
        except RouteError:
            temp = True
            continue
        if any(is_loop(a, port, listeners) for a in addresses):
            if not hops:
                raise RouteError(Status.PERMFAIL, LOOP)
            break
        if addresses:
            hops.append(NextHop(mx.preference, mx.host, tuple(addresses)))
    if hops:
        return hops
    domain = domain.rstrip(".").lower()
    if temp or not implicit:
        # An MX host without an address may be a transient misconfiguration.
        raise RouteError(Status.TEMPFAIL, f"451 4.4.4 No address for the MX hosts of {domain}")
    raise RouteError(Status.PERMFAIL, f"550 5.1.2 No mail exchanger for {domain}")
