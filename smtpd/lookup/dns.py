"""Client host names: reverse DNS and its forward confirmation (FCrDNS), with
dnspython.  Loopback addresses are answered locally, as /etc/hosts would.

`PYSMTPD_RESOLVER=host[:port][,host[:port]...]` overrides the system resolver
(resolv.conf cannot name a port): tests point it at a stub server they run.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename

RESOLVER_ENV = "PYSMTPD_RESOLVER"
TIMEOUT = 5.0  # seconds for the whole PTR + A/AAAA lookup (RFC 5321 §4.5.3.2 spirit)


@dataclass(frozen=True)
class HostName:
    name: str        # "" when the address has no usable PTR record
    confirmed: bool  # forward lookup of `name` gives the address back (FCrDNS)
    tempfail: bool = False


def make_resolver(spec: str | None = None) -> dns.asyncresolver.Resolver:
    spec = os.environ.get(RESOLVER_ENV) if spec is None else spec
    if not spec:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers: list[str] = []
        for item in spec.split(","):
            host, _, port = item.strip().rpartition(":") if item.count(":") == 1 else (
                item.strip(), "", "")
            servers.append(host or item.strip())
            if port:
                resolver.port = int(port)
        resolver.nameservers = servers
    resolver.lifetime = TIMEOUT
    resolver.timeout = TIMEOUT / 2
    return resolver


async def client_hostname(resolver: dns.asyncresolver.Resolver, address: str) -> HostName:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return HostName("", False)
    if ip.is_loopback:
        return HostName("localhost", True)
    try:
        answer = await resolver.resolve(dns.reversename.from_address(str(ip)), "PTR")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return HostName("", False)
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.exception.DNSException):
        return HostName("", False, tempfail=True)
    name = str(answer[0].target).rstrip(".").lower()
    if not name:
        return HostName("", False)
    rdtype = "AAAA" if ip.version == 6 else "A"
    try:
        forward = await resolver.resolve(name, rdtype)
    except dns.exception.DNSException:
        return HostName(name, False)
    confirmed = any(ipaddress.ip_address(r.address) == ip for r in forward)
    return HostName(name, confirmed)
