"""Match rules against one envelope, as upstream ruleset.c: rules in order,
the first whose every condition holds wins; no rule means reject (550).

Sans-IO: the caller gives what the session knows (RuleInput) and the open
tables; a table's TableTempFail propagates (the caller answers 451).

Built-in sets, as upstream's <localhost>, <anyhost>, <localnames> and
<anydestination> tables:
* ``from local``: the local enqueuer or a loopback address;
* ``from any``: every source;  ``for any``: every destination;
* ``for local``: the domain is one of ``local_names`` (by default
  "localhost", the configured hostname and every listener hostname).

Differences from upstream, deliberate: ``tls`` is evaluated (upstream
always tempfails it: "not until TLS flag is added to envelope").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from smtpd.config import model
from smtpd.table import Service, Table
from smtpd.table.match import hostname_match

C = model.CondKind


@dataclass(frozen=True)
class RuleInput:
    """What one RCPT (or one expanded address) is matched with.

    src: the client's address as text, "local" for the local enqueuer.
    internal: an envelope made by alias/forward expansion (upstream
    EF_INTERNAL): its source is "local" and ``from socket``/``from rdns``
    rules without a table do not apply.  rdns None: no reverse DNS name.
    auth_user None: not authenticated.  mail_from "" is the null sender.
    """

    src: str
    rcpt_to: str
    mail_from: str = ""
    helo: str = ""
    rdns: str | None = None
    tag: str = ""
    tls: bool = False
    auth_user: str | None = None
    internal: bool = False

    @property
    def dest_domain(self) -> str:
        return self.rcpt_to.rpartition("@")[2].lower()


def _is_loopback(src: str) -> bool:
    try:
        return ipaddress.ip_address(src.split("%")[0]).is_loopback
    except ValueError:
        return False


class Ruleset:
    """The rules of one Config with the tables they name."""

    def __init__(self, config: model.Config, tables: Mapping[str, Table],
                 local_names: Iterable[str] | None = None) -> None:
        self.rules = config.rules
        self.tables = tables
        if local_names is None:
            names = {"localhost", config.hostname}
            names.update(lst.hostname for lst in config.listeners if lst.hostname)
            local_names = names
        self.local_names = tuple(n.lower() for n in local_names)

    def match(self, inp: RuleInput) -> model.MatchRule | None:
        """The first rule that matches, or None (TableTempFail propagates)."""
        for rule in self.rules:
            if all(self._condition(c, inp) for c in rule.conditions):
                return rule
        return None

    def _table(self, cond: model.Condition, service: Service, key: str) -> bool:
        assert cond.table is not None
        table = self.tables[cond.table]
        return table.match(Service.REGEX if cond.regex else service, key)

    def _condition(self, cond: model.Condition, inp: RuleInput) -> bool:
        kind = cond.kind
        if kind in (C.FROM_AUTH, C.FROM_MAIL_FROM, C.FOR_RCPT_TO):
            # "from auth" = from any + [!] auth, and so on: the negation is
            # the auth/mail-from/rcpt-to part's (parse.y)
            return self._raw(cond, inp) != cond.negate
        if kind.is_from and inp.internal:
            if kind in (C.FROM_SOCKET,) or (kind is C.FROM_RDNS and cond.table is None):
                return False  # upstream: rules without a from table do not apply
            if kind in (C.FROM_ANY, C.FROM_LOCAL):
                return not cond.negate  # both built-in sets hold "local"
            return self._table(cond, Service.NETADDR, "local") != cond.negate
        if kind is C.FROM_RDNS:
            if inp.rdns is None:
                return cond.table is None and cond.negate  # no name: only "!from rdns"
            if cond.table is None:
                return not cond.negate
            return self._table(cond, Service.DOMAIN, inp.rdns) != cond.negate
        if kind is C.FROM_SOCKET:
            # upstream: a non-socket source fails "from socket" and passes "!from socket"
            return (inp.src == "local") != cond.negate
        return self._raw(cond, inp) != cond.negate

    def _raw(self, cond: model.Condition, inp: RuleInput) -> bool:
        kind = cond.kind
        if kind in (C.FROM_ANY, C.FOR_ANY):
            return True
        if kind is C.FROM_LOCAL:
            return inp.src == "local" or _is_loopback(inp.src)
        if kind is C.FROM_SRC:
            return self._table(cond, Service.NETADDR, inp.src)
        if kind is C.FOR_LOCAL:
            return any(hostname_match(inp.dest_domain, n) for n in self.local_names)
        if kind is C.FOR_DOMAIN:
            return self._table(cond, Service.DOMAIN, inp.dest_domain)
        if kind in (C.FROM_AUTH, C.AUTH):
            if inp.auth_user is None:
                return False
            if cond.table is None:
                return True
            service = Service.MAILADDR if "@" in inp.auth_user else Service.STRING
            return self._table(cond, service, inp.auth_user)
        if kind in (C.FROM_MAIL_FROM, C.MAIL_FROM):
            return self._table(cond, Service.MAILADDR, inp.mail_from)
        if kind in (C.FOR_RCPT_TO, C.RCPT_TO):
            return self._table(cond, Service.MAILADDR, inp.rcpt_to)
        if kind is C.TAG:
            return self._table(cond, Service.STRING, inp.tag)
        if kind is C.HELO:
            return self._table(cond, Service.DOMAIN, inp.helo)
        if kind is C.TLS:
            return inp.tls
        raise AssertionError(f"unhandled condition {kind}")
