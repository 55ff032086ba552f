"""Match rules, evaluated in order, first match wins (smtpd.conf(5), upstream
ruleset.c).  Sans-IO: tables are passed in, nothing here touches the network."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from smtpd.config.model import Condition, CondKind, Config, MatchRule
from smtpd.table.backend import Service, Table


@dataclass(frozen=True)
class SessionFacts:
    """What a rule may look at for one recipient."""

    local: bool      # local enqueue (socket)
    src: str         # client address, "local" for the socket
    rdns: str
    helo: str
    tls: bool
    auth_user: str
    tag: str
    sender: str      # "" for <>
    rcpt: str


def is_loopback(src: str) -> bool:
    try:
        return ipaddress.ip_address(src.strip("[]")).is_loopback
    except ValueError:
        return False


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


class Ruleset:
    def __init__(self, config: Config, tables: Mapping[str, Table],
                 local_names: frozenset[str]) -> None:
        self.config = config
        self.tables = tables
        self.local_names = local_names

    def match(self, facts: SessionFacts) -> MatchRule | None:
        for rule in self.config.rules:
            if all(self._holds(cond, facts) for cond in rule.conditions):
                return rule
        return None

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.local_names

    def _table_match(self, cond: Condition, service: Service, key: str) -> bool:
        if cond.table is None:
            return False
        table = self.tables[cond.table]
        return table.match(Service.REGEX if cond.regex else service, key)

    def _holds(self, cond: Condition, f: SessionFacts) -> bool:
        return self._test(cond, f) != cond.negate

    def _test(self, cond: Condition, f: SessionFacts) -> bool:
        match cond.kind:
            case CondKind.FROM_ANY | CondKind.FOR_ANY:
                return True
            case CondKind.FROM_LOCAL:
                return f.local or is_loopback(f.src)
            case CondKind.FROM_SOCKET:
                return f.local
            case CondKind.FROM_SRC:
                return self._table_match(cond, Service.NETADDR, f.src.strip("[]"))
            case CondKind.FROM_AUTH | CondKind.AUTH:
                if not f.auth_user:
                    return False
                return cond.table is None or self._table_match(
                    cond, Service.STRING, f.auth_user)
            case CondKind.FROM_RDNS:
                if not f.rdns:
                    return False
                return cond.table is None or self._table_match(cond, Service.DOMAIN, f.rdns)
            case CondKind.FROM_MAIL_FROM | CondKind.MAIL_FROM:
                return self._table_match(cond, Service.MAILADDR, f.sender)
            case CondKind.FOR_LOCAL:
                return self.is_local_domain(domain_of(f.rcpt))
            case CondKind.FOR_DOMAIN:
                return self._table_match(cond, Service.DOMAIN, domain_of(f.rcpt))
            case CondKind.FOR_RCPT_TO | CondKind.RCPT_TO:
                return self._table_match(cond, Service.MAILADDR, f.rcpt)
            case CondKind.TAG:
                return self._table_match(cond, Service.STRING, f.tag)
            case CondKind.HELO:
                return self._table_match(cond, Service.DOMAIN, f.helo)
            case CondKind.TLS:
                return f.tls
        return False
