"""What the relay knows about its next hops: connection counts, limits and
host back-off, kept sans-IO (the caller passes ``now``) so that tests can
drive the clock.

Objects follow upstream's mta.c: a *host* is one address and port, a
*domain* is the destination domain (or the smarthost's name), a *relay*
is a domain with a route's delivery parameters, a *source* is a local
address (``[]`` for "any"), a *connector* joins a relay and a source and a
*route* joins a source and a host.  Each lives while something uses it
(a session, a transfer, an attempt) and, for hosts and routes, while
they remember failures; ``prune`` drops the others so that the ``mta.*``
gauges return to 0 when the relay is idle.

Limits (upstream's limit_mta_set_defaults): at most 10 sessions per host
and 100 per domain at once.  Back-off: after a connection failure or a
refused greeting, a host is avoided for 60 s, doubling with each
consecutive failure up to 1 h; a successful session resets it (RFC 5321
§4.5.4.1 asks for retry intervals that grow, not for hammering).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

HostKey = tuple[str, int]  # (address, port)

# upstream: HOSTSTAT_EXPIRE_DELAY, how long a domain's last result is shown
HOSTSTAT_EXPIRE = 4 * 3600.0


@dataclass(frozen=True)
class Limits:
    max_conn_per_host: int = 10
    max_conn_per_domain: int = 100
    backoff_base: float = 60.0
    backoff_max: float = 3600.0
    # a host that failed is forgotten (its back-off starts again at the base)
    # this long after its last failure
    forget_after: float = HOSTSTAT_EXPIRE

    def backoff(self, consecutive: int) -> float:
        """The interval after ``consecutive`` failures in a row (>= 1)."""
        factor = float(2 ** min(max(consecutive, 1) - 1, 32))
        return min(self.backoff_base * factor, self.backoff_max)


@dataclass
class HostState:
    address: str
    port: int
    name: str  # the MX or relay host name (upstream shows the PTR name)
    nconn: int = 0  # sessions open or being opened now
    connections: int = 0  # sessions opened successfully, ever
    failures: int = 0  # failed attempts, ever
    consecutive: int = 0  # failed attempts since the last success
    last_error: str = ""
    lastconn: float = 0.0
    last_failure: float = 0.0
    backoff_until: float = 0.0

    def backed_off(self, now: float) -> bool:
        return now < self.backoff_until


@dataclass
class RouteState:
    ident: int
    source: str | None
    host: HostKey
    nconn: int = 0
    nerror: int = 0
    validated: bool = False  # one session got through (upstream: not ROUTE_NEW)


@dataclass
class DomainState:
    name: str
    nconn: int = 0
    ntask: int = 0


@dataclass
class RelayState:
    key: str
    text: str  # upstream's [relay:...] form
    source: str | None
    ntask: int = 0
    nconn: int = 0
    lastconn: float = 0.0
    # transfers waiting for a slot, by upstream's connector flag (LIMIT_HOST...)
    waiting: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HostStat:
    when: float
    text: str


class Registry:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.hosts: dict[HostKey, HostState] = {}
        self.routes: dict[tuple[str | None, HostKey], RouteState] = {}
        self.domains: dict[str, DomainState] = {}
        self.relays: dict[str, RelayState] = {}
        self.hoststats: dict[str, HostStat] = {}
        self.sessions = 0
        self._route_ids = itertools.count(1)
        self._next_hoststat_prune = 0.0

    # -- lookups (creating) ----------------------------------------------------

    def host(self, address: str, port: int, name: str) -> HostState:
        h = self.hosts.get((address, port))
        if h is None:
            h = self.hosts[(address, port)] = HostState(address, port, name)
        elif name:
            h.name = name
        return h

    def route(self, source: str | None, host: HostKey) -> RouteState:
        r = self.routes.get((source, host))
        if r is None:
            r = self.routes[(source, host)] = RouteState(next(self._route_ids), source, host)
        return r

    def domain(self, name: str) -> DomainState:
        d = self.domains.get(name)
        if d is None:
            d = self.domains[name] = DomainState(name)
        return d

    def relay(self, key: str, text: str, source: str | None) -> RelayState:
        r = self.relays.get(key)
        if r is None:
            r = self.relays[key] = RelayState(key, text, source)
        return r

    # -- decisions -------------------------------------------------------------

    def usable(self, hosts: Iterable[HostKey], now: float) -> list[HostKey]:
        """The hosts not backed off, in the given order."""
        out = []
        for key in hosts:
            h = self.hosts.get(key)
            if h is None or not h.backed_off(now):
                out.append(key)
        return out

    def backoff_end(self, hosts: Iterable[HostKey]) -> float:
        return min((self.hosts[k].backoff_until for k in hosts if k in self.hosts),
                   default=0.0)

    def domain_full(self, domain: str) -> bool:
        d = self.domains.get(domain)
        return d is not None and d.nconn >= self.limits.max_conn_per_domain

    def host_full(self, key: HostKey) -> bool:
        h = self.hosts.get(key)
        return h is not None and h.nconn >= self.limits.max_conn_per_host

    # -- events ----------------------------------------------------------------

    def task_started(self, relay: RelayState, domain: str) -> None:
        relay.ntask += 1
        self.domain(domain).ntask += 1

    def task_done(self, relay: RelayState, domain: str) -> None:
        relay.ntask -= 1
        self.domain(domain).ntask -= 1

    def attempt(self, relay: RelayState, domain: str, host: HostState) -> RouteState:
        """A connection is being opened: it takes its slots now."""
        route = self.route(relay.source, (host.address, host.port))
        for holder in (host, route, relay, self.domain(domain)):
            holder.nconn += 1
        return route

    def release(self, relay: RelayState, domain: str, host: HostState) -> None:
        """A connection (or attempt) ended: its slots are free."""
        route = self.route(relay.source, (host.address, host.port))
        for holder in (host, route, relay, self.domain(domain)):
            holder.nconn = max(0, holder.nconn - 1)

    def connected(self, relay: RelayState, host: HostState, now: float) -> None:
        route = self.route(relay.source, (host.address, host.port))
        route.validated = True
        route.nerror = 0
        host.connections += 1
        host.consecutive = 0
        host.backoff_until = 0.0
        host.lastconn = relay.lastconn = now
        self.sessions += 1

    def failed(self, relay: RelayState, host: HostState, error: str, now: float,
               *, backoff: bool) -> float:
        """An attempt failed; with ``backoff`` the host is avoided for a
        growing interval, returned (0 without back-off)."""
        route = self.route(relay.source, (host.address, host.port))
        route.nerror += 1
        host.failures += 1
        host.last_error = error
        host.last_failure = now
        host.lastconn = relay.lastconn = now
        if not backoff:
            return 0.0
        host.consecutive += 1
        interval = self.limits.backoff(host.consecutive)
        host.backoff_until = now + interval
        return interval

    def session_closed(self) -> None:
        self.sessions = max(0, self.sessions - 1)

    def hoststat(self, domain: str, text: str, now: float) -> None:
        self.hoststats[domain.lower()] = HostStat(now, text)

    # -- life cycle --------------------------------------------------------------

    def prune(self, now: float) -> None:
        """Drop what nothing uses and nothing needs to remember."""
        for key, h in list(self.hosts.items()):
            remembers = h.consecutive and now < h.last_failure + self.limits.forget_after
            if h.nconn == 0 and not remembers:
                del self.hosts[key]
        for rkey, r in list(self.routes.items()):
            if r.nconn == 0 and r.host not in self.hosts:
                del self.routes[rkey]
        for name, d in list(self.domains.items()):
            if d.nconn == 0 and d.ntask == 0:
                del self.domains[name]
        for rname, rel in list(self.relays.items()):
            if rel.nconn == 0 and rel.ntask == 0:
                del self.relays[rname]
        if now >= self._next_hoststat_prune:
            # a scan a minute: there may be many domains, and no hurry
            self._next_hoststat_prune = now + 60
            for name, stat in list(self.hoststats.items()):
                if now >= stat.when + HOSTSTAT_EXPIRE:
                    del self.hoststats[name]

    def gauges(self) -> dict[str, int]:
        """Upstream's stat keys, counting live objects."""
        sources = {r.source for r in self.relays.values()}
        sources |= {r.source for r in self.routes.values()}
        return {
            "mta.session": self.sessions,
            "mta.host": len(self.hosts),
            "mta.relay": len(self.relays),
            "mta.route": len(self.routes),
            "mta.domain": len(self.domains),
            "mta.connector": len(self.relays),  # one source per relay here
            "mta.source": len(sources),
        }
