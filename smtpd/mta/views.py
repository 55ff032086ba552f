"""``smtpctl show hosts|relays|routes|hoststats`` lines in upstream's formats
(mta.c IMSG_CTL_MTA_SHOW_*), with our counters appended after upstream's
fields so that scripts splitting upstream's prefix keep working.

    hosts:     127.0.0.1:2525 mx.test refcount=1 nconn=1 lastconn=2s
               connections=3 failures=0 backoff=- error="-"
    relays:    [relay:smart.test,port=2525,smtp,mx] refcount=1 ntask=0 nconn=1
               lastconn=2s timeout=- wait=
                 connector [] refcount=1 nconn=1 lastconn=2s timeout=- flags=
    routes:    1. [] <-> 127.0.0.1:2525 (mx.test) -D-- nconn=0 nerror=1 penalty=1
               timeout=58s
    hoststats: example.org|1796371200|250 2.0.0 Ok

Durations are util.c's duration_to_text (logfmt.duration_text).
"""

from __future__ import annotations

import math

from smtpd.config.model import RelayProto
from smtpd.mta.logfmt import address_text, duration_text
from smtpd.mta.registry import HostKey, HostState, Registry, RouteState
from smtpd.mta.routing import Route
from smtpd.mta.transfer import TlsPolicy

_TLS_NAMES = {TlsPolicy.OPPORTUNISTIC: "smtp", TlsPolicy.STARTTLS: "smtp+tls",
              TlsPolicy.SMTPS: "smtps", TlsPolicy.NONE: "smtp+notls"}


def relay_text(route: Route, domain: str) -> str:
    """mta.c mta_relay_to_text: ``[relay:example.org,smtp]``,
    ``[relay:smart.test,port=587,smtp+tls,auth=label,mx]``."""
    parts = [f"[relay:{route.relay.host if route.relay else domain}"]
    if route.relay is not None and route.relay.port_explicit:
        parts.append(f"port={route.relay.port}")
    lmtp = route.relay is not None and route.relay.proto is RelayProto.LMTP
    parts.append("lmtp" if lmtp else _TLS_NAMES[route.tls])
    if route.relay is not None and route.relay.label:
        parts.append(f"auth={route.relay.label}")
    if route.relay is not None:
        parts.append("mx")  # upstream flags a relay host this way (domain as_host)
    if route.backup_mx:
        parts.append(f"backup={route.backup_mx}")
    if route.source:
        parts.append(f"source={route.source}")
    parts.append(f"heloname={route.helo}")
    return ",".join(parts) + "]"


def source_text(source: str | None) -> str:
    return "[]" if source is None else address_text(source)


def host_text(key: HostKey) -> str:
    """The address, with the port when it is not SMTP's own."""
    address, port = key
    return address_text(address) if port == 25 else address_text(address, port)


def _ago(now: float, when: float) -> str:
    return duration_text(int(now - when)) if when else "-"


def _until(now: float, when: float) -> str:
    return duration_text(math.ceil(when - now)) if when > now else "-"


def _host_line(h: HostState, now: float) -> str:
    error = h.last_error.replace('"', "'") or "-"
    return (f"{host_text((h.address, h.port))} {h.name or '-'} refcount={h.nconn} "
            f"nconn={h.nconn} lastconn={_ago(now, h.lastconn)} connections={h.connections} "
            f'failures={h.failures} backoff={_until(now, h.backoff_until)} error="{error}"')


def show_hosts(reg: Registry, now: float) -> list[str]:
    return [_host_line(reg.hosts[k], now) for k in sorted(reg.hosts)]


def show_relays(reg: Registry, now: float) -> list[str]:
    out = []
    for key in sorted(reg.relays):
        r = reg.relays[key]
        wait = ",".join(sorted(r.waiting))
        refs = r.ntask + r.nconn
        out.append(f"{r.text} refcount={refs} ntask={r.ntask} nconn={r.nconn} "
                   f"lastconn={_ago(now, r.lastconn)} timeout=- wait={wait}")
        flags = ",".join(sorted(r.waiting))
        out.append(f"  connector {source_text(r.source)} refcount={refs} nconn={r.nconn} "
                   f"lastconn={_ago(now, r.lastconn)} timeout=- flags={flags}")
    return out


def route_text(reg: Registry, route: RouteState) -> str:
    """mta.c mta_route_to_text: ``[] <-> 192.0.2.1 (mx.example.org)``."""
    h = reg.hosts.get(route.host)
    name = f" ({h.name})" if h is not None and h.name else ""
    return f"{source_text(route.source)} <-> {host_text(route.host)}{name}"


def show_routes(reg: Registry, now: float) -> list[str]:
    out = []
    for r in sorted(reg.routes.values(), key=lambda x: x.ident):
        h = reg.hosts.get(r.host)
        disabled = h is not None and h.backed_off(now)
        flags = ("-" if r.validated else "N") + ("D" if disabled else "-") + "--"
        penalty = h.consecutive if h is not None else 0
        timeout = _until(now, h.backoff_until) if h is not None else "-"
        out.append(f"{r.ident}. {route_text(reg, r)} {flags} nconn={r.nconn} "
                   f"nerror={r.nerror} penalty={penalty} timeout={timeout}")
    return out


def show_hoststats(reg: Registry) -> list[str]:
    """``domain|time of the last result|its text`` (mta.c hoststat)."""
    return [f"{name}|{int(s.when)}|{s.text}" for name, s in sorted(reg.hoststats.items())]
