"""The smtp process's outbound side: relay transfers the queue hands over
(issue 7).  Routing, sessions and connection reuse live in smtpd.mta; this
module only turns a QUEUE_MTA_TRANSFER into a relay and its results into an
SMTP_MTA_RESULT."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from smtpd.config.model import ActionKind, Config
from smtpd.lookup.dns import make_resolver
from smtpd.lookup.mx import RouteError
from smtpd.mta.mtasts import MtaSts
from smtpd.mta.relay import Relayer
from smtpd.mta.routing import route_for
from smtpd.mta.tlspolicy import TlsPlanner
from smtpd.queue.envelope import Envelope, EnvelopeError, load_envelope
from smtpd.smtp.ratelimit import RateKind
from smtpd.table.backend import Table, TableError, open_table

if TYPE_CHECKING:
    from smtpd.smtp.proc import SmtpProcess

# Test knob: deliver MX routes to this port instead of 25 (a sink on loopback).
MX_PORT_ENV = "PYSMTPD_MX_PORT"
# Test knobs: the MTA-STS policy server's port (443) and a CA bundle that
# replaces the system store for MTA-STS (policy fetch and MX certificates).
MTASTS_PORT_ENV = "PYSMTPD_MTASTS_PORT"
MTASTS_CA_ENV = "PYSMTPD_MTASTS_CA"


def relay_tables(config: Config) -> dict[str, Table]:
    """The tables relay actions name (credentials, domain routes, sources)."""
    names: set[str] = set()
    for action in config.actions.values():
        r = action.relay
        if action.kind is ActionKind.RELAY and r is not None:
            names.update(n for n in (r.auth_table, r.domain_table, r.host_table, r.src_table,
                                     r.helo_src_table, r.tls_policy_table) if n)
    tables = {}
    for name in names:
        table = open_table(config.tables[name], config.smtp.sub_addr_delim)
        table.open()
        tables[name] = table
    return tables


class MtaSide:
    def __init__(self, smtp: SmtpProcess) -> None:
        self.smtp = smtp
        self.config: Config = smtp.config
        try:
            self.tables = relay_tables(self.config)
        except (TableError, OSError) as exc:
            smtp.log.warning("mta: relay tables: %s", exc)
            self.tables = {}
        self.relayer: Relayer | None = None

    def start(self, listeners: list[tuple[str, int]]) -> None:
        resolver = make_resolver()

        def log(line: str) -> None:
            self.smtp.log.info("%s", line)

        sts = MtaSts(resolver, port=int(os.environ.get(MTASTS_PORT_ENV, "443")),
                     ca_file=os.environ.get(MTASTS_CA_ENV) or None, log=log)
        self.relayer = Relayer(resolver, listeners=listeners,
                               mx_port=int(os.environ.get(MX_PORT_ENV, "25")),
                               stat=self.smtp.stats.set, log=log,
                               tls=TlsPlanner(resolver, sts=sts, log=log))

    async def transfer(self, dispatcher: str, domain: str, texts: list[str],
                       message_fd: int) -> list[list[int | str]]:
        """[evpid, status, text] for every envelope; never raises."""
        try:
            envelopes = [load_envelope(t.encode()) for t in texts]
        except EnvelopeError as exc:
            os.close(message_fd)
            return [[_evpid_of(t), "permfail", f"554 5.3.0 Malformed envelope: {exc}"]
                    for t in texts]
        with os.fdopen(message_fd, "rb") as message:
            action = self.config.actions.get(dispatcher)
            if action is None or action.relay is None or self.relayer is None:
                return _all(envelopes, "tempfail", f"451 4.3.5 No relay action {dispatcher!r}")
            over = self.smtp.rates.allow(RateKind.RELAY, [f"domain:{domain.lower()}"],
                                         len(envelopes))
            if over is not None:
                # `smtp rate relay`: the domain had its share; retried later
                self.smtp.log.info("mta: rate-limit kind=relay key=%s retry-after=%ds", over,
                                   self.smtp.rates.retry_after(RateKind.RELAY, over))
                return _all(envelopes, "tempfail",
                            f"451 4.7.1 Rate limit for {domain.lower()} reached, deferred")
            try:
                route = route_for(action.relay, domain, hostname=self.config.hostname,
                                  tables=self.tables, cas=self.config.cas)
            except RouteError as exc:
                return _all(envelopes, exc.status.value, exc.text)
            result = await self.relayer.relay(route, domain, envelopes, message)
        return [[r.evpid, r.status.value, r.text] for r in result.results]

    def ctl(self, verb: str) -> tuple[int, list[str]]:
        """`smtpctl show hoststats|relays|routes|hosts`: what the relay knows."""
        if self.relayer is None:
            return 0, []
        view = getattr(self.relayer, f"show_{verb}", None)
        if view is None:
            return 1, [f"smtpctl: unknown smtp request {verb}"]
        lines: list[str] = view()
        return 0, lines

    async def close(self) -> None:
        if self.relayer is not None:
            await self.relayer.close()


def _all(envelopes: list[Envelope], status: str, text: str) -> list[list[int | str]]:
    return [[e.evpid, status, text] for e in envelopes]


def _evpid_of(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("evpid: "):
            try:
                return int(line[7:], 16)
            except ValueError:
                break
    return 0
