"""From a relay action and a destination domain to a ``Route``: a fixed
smarthost (``relay host URL``, ``relay domain <table>``) or MX routing, with
TLS policy, credentials, HELO name and source address (smtpd.conf(5)).

Relay URL schemes (smtpd.conf(5) "relay host"):
  smtp://       STARTTLS when offered (``tls`` makes it mandatory)
  smtp+tls://   STARTTLS mandatory      smtp+notls://  never TLS
  smtps://      TLS from the first byte lmtp://        LMTP (port required)
A ``label@`` in the URL names the credentials in the ``auth <table>``.
Certificates are verified with mandatory TLS (``tls``, ``smtp+tls``,
``smtps``) unless ``no-verify``; opportunistic STARTTLS never verifies.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from smtpd.config.model import Ca, RelayOptions, RelayProto, RelayTls, RelayTlsPolicy, RelayUrl
from smtpd.config.parse_action import parse_relay_url
from smtpd.lookup.mx import RouteError
from smtpd.mta.transfer import SessionConfig, Status, Timeouts, TlsPolicy
from smtpd.table.backend import Table
from smtpd.table.service import Service, TableError


@dataclass(frozen=True)
class Route:
    """``relay`` None means: the MX hosts of the domain, port 25."""

    relay: RelayUrl | None
    helo: str
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC
    verify: bool = False
    lmtp: bool = False
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    source: str | None = None
    backup_mx: str | None = None
    ca_file: str | None = None
    tls_select: RelayTlsPolicy = RelayTlsPolicy.NONE  # MTA-STS / DANE (MX routes only)

    @property
    def key(self) -> str:
        """Sessions with the same key and host may be shared (connection
        reuse groups messages by it)."""
        target = str(self.relay) if self.relay else "mx"
        user = self.credentials[0] if self.credentials else ""
        return (f"{target}|{self.tls.value}|{user}|{self.source or ''}|{self.helo}"
                f"|{self.tls_select.value}")

    def session_config(self, timeouts: Timeouts | None = None,
                       server_name: str | None = None) -> SessionConfig:
        return SessionConfig(
            helo=self.helo, lmtp=self.lmtp, tls=self.tls, verify=self.verify,
            ca_file=self.ca_file, server_name=server_name, credentials=self.credentials,
            source=self.source, timeouts=timeouts or Timeouts())


def tls_policy(proto: RelayProto | None, tls: RelayTls) -> tuple[TlsPolicy, bool]:
    """(policy, verify) of a relay URL scheme and the action's ``tls``."""
    no_verify = tls is RelayTls.REQUIRE_NO_VERIFY
    if proto is RelayProto.SMTP_NOTLS:
        return TlsPolicy.NONE, False
    if proto is RelayProto.SMTPS:
        return TlsPolicy.SMTPS, not no_verify
    if proto is RelayProto.SMTP_TLS or tls is not RelayTls.OPPORTUNISTIC:
        return TlsPolicy.STARTTLS, not no_verify
    return TlsPolicy.OPPORTUNISTIC, False


def _config_error(text: str) -> RouteError:
    # A configuration or table problem: keep the mail, the admin can fix it.
    return RouteError(Status.TEMPFAIL, f"451 4.3.0 {text}")


def _relay_url(options: RelayOptions, domain: str, tables: Mapping[str, Table],
               rng: random.Random) -> RelayUrl | None:
    try:
        if options.domain_table is not None:
            value = _table(tables, options.domain_table).relayhost(domain)
            if value is not None:
                return _parse(value)
        if options.host is not None:
            return options.host
        if options.host_table is not None:
            values = _table(tables, options.host_table).fetch(Service.RELAYHOST)
            if not values:
                raise _config_error(f"relay host table {options.host_table} is empty")
            return _parse(rng.choice(values))
    except TableError as exc:
        raise _config_error(f"table lookup failed: {exc}") from exc
    return None


def _parse(text: str) -> RelayUrl:
    url = parse_relay_url(text.strip())
    if url is None:
        raise _config_error(f"malformed relay URL: {text!r}")
    return url


def _table(tables: Mapping[str, Table], name: str) -> Table:
    table = tables.get(name)
    if table is None:
        raise _config_error(f"no table {name}")
    return table


def _tls_select(options: RelayOptions, domain: str,
                tables: Mapping[str, Table]) -> RelayTlsPolicy:
    """``tls-policy WORD`` or ``tls-policy <t>``: the domain, then its
    parents as ``.parent`` keys (Postfix tls_policy_maps style); no entry
    means none."""
    if options.tls_policy_table is None:
        return options.tls_policy
    table = _table(tables, options.tls_policy_table)
    labels = domain.split(".")
    keys = [domain] + ["." + ".".join(labels[i:]) for i in range(1, len(labels))]
    try:
        for key in keys:
            value = table.relayhost(key)
            if value is not None:
                try:
                    return RelayTlsPolicy(value.strip().lower())
                except ValueError:
                    raise _config_error(f"bad tls-policy {value!r} for {key}") from None
    except TableError as exc:
        raise _config_error(f"table lookup failed: {exc}") from exc
    return RelayTlsPolicy.NONE


def route_for(options: RelayOptions, domain: str, *, hostname: str,
              tables: Mapping[str, Table], cas: Mapping[str, Ca] | None = None,
              rng: random.Random | None = None) -> Route:
    """The route of a ``relay`` action for ``domain``; ``hostname`` is the
    default HELO name (the config's hostname).  RouteError (temporary) for
    a missing table, label or credentials."""
    rng = rng or random.Random()
    url = _relay_url(options, domain.lower(), tables, rng)
    policy, verify = tls_policy(url.proto if url else None, options.tls)
    credentials = None
    try:
        if url is not None and url.label:
            if options.auth_table is None:
                raise _config_error(f"relay label {url.label} needs an auth table")
            creds = _table(tables, options.auth_table).credentials(url.label)
            if creds is None:
                raise _config_error(f"no credentials for relay label {url.label}")
            credentials = (creds.username, creds.password)
        source = None
        if options.src_table is not None:
            source = _table(tables, options.src_table).next_source()
        helo = options.helo or hostname
        if options.helo_src_table is not None and source is not None:
            helo = _table(tables, options.helo_src_table).addrname(source) or helo
    except TableError as exc:
        raise _config_error(f"table lookup failed: {exc}") from exc
    ca_file = None
    if options.ca is not None:
        ca = (cas or {}).get(options.ca)
        if ca is None:
            raise _config_error(f"no ca {options.ca}")
        ca_file = ca.cert or ca.source
    return Route(
        relay=url, helo=helo, tls=policy, verify=verify,
        lmtp=url is not None and url.proto is RelayProto.LMTP, credentials=credentials,
        source=source, backup_mx=(options.backup_mx or hostname) if options.backup else None,
        ca_file=ca_file,
        tls_select=_tls_select(options, domain.lower(), tables) if url is None
        else RelayTlsPolicy.NONE)
