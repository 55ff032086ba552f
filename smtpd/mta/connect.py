"""From a Route to an open session: the targets to try (relay host or MX
hosts, every address), loop checks, and trying them in order.

    targets = await targets_for(route, "example.org", resolver, listeners=[("0.0.0.0", 25)])
    session, target = await open_session(route, targets, timeouts=Timeouts())

RFC 5321 §5.1: every address of every MX host in order until one answers;
a connection or handshake failure moves on to the next target.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.asyncresolver

from smtpd.lookup.mx import LOOP, RouteError, is_loop, resolve_addresses, resolve_route
from smtpd.mta.routing import Route
from smtpd.mta.session import MtaSession
from smtpd.mta.transfer import SessionError, Status, Timeouts, TlsPolicy


@dataclass(frozen=True)
class Target:
    host: str  # the name verified in certificates and shown in logs
    address: str
    port: int
    preference: int = 0


def scheme(route: Route) -> str:
    """The URL scheme upstream logs in ``mta connecting address=...``."""
    if route.lmtp:
        return "lmtp://"
    return {TlsPolicy.OPPORTUNISTIC: "smtp://", TlsPolicy.STARTTLS: "smtp+tls://",
            TlsPolicy.SMTPS: "smtps://", TlsPolicy.NONE: "smtp+notls://"}[route.tls]


async def targets_for(route: Route, domain: str, resolver: dns.asyncresolver.Resolver, *,
                      listeners: Sequence[tuple[str, int]] = (), mx_port: int = 25,
                      rng: random.Random | None = None) -> list[Target]:
    """Where to connect for ``domain`` along ``route``, in order.  RouteError
    for DNS answers that fail the envelopes (null MX, NXDOMAIN, a loop) or
    delay them (DNS failure).  ``mx_port`` is 25 except in tests."""
    if route.relay is None:
        hops = await resolve_route(resolver, domain, port=mx_port, listeners=listeners,
                                   backup_mx=route.backup_mx, rng=rng)
        return [Target(h.host, a, mx_port, h.preference) for h in hops for a in h.addresses]
    host, port = route.relay.host, route.relay.port
    if host.lower() == "localhost":
        addresses = ["127.0.0.1"]  # what /etc/hosts says everywhere; no DNS for it
    else:
        addresses = await resolve_addresses(resolver, host)
    if not addresses:
        raise RouteError(Status.TEMPFAIL, f"451 4.4.4 No address for relay host {host}")
    if any(is_loop(a, port, listeners) for a in addresses):
        raise RouteError(Status.PERMFAIL, LOOP)
    return [Target(host, a, port) for a in addresses]


async def open_session(route: Route, targets: Sequence[Target], *,
                       timeouts: Timeouts | None = None,
                       on_connecting: Callable[[Target], None] | None = None,
                       ) -> tuple[MtaSession, Target]:
    """Open a session with the first target that works.  SessionError (the
    last failure, a temporary one) when none does."""
    if not targets:
        raise SessionError("451 4.4.4 No next hop")
    error = SessionError("451 4.4.4 No next hop")
    for target in targets:
        if on_connecting is not None:
            on_connecting(target)
        config = route.session_config(timeouts, server_name=target.host)
        try:
            session = await MtaSession.open(target.host, target.port, config,
                                            address=target.address)
        except SessionError as exc:
            error = exc
            continue
        return session, target
    raise error
