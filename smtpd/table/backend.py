"""Table front: the TableBackend protocol, the registry, typed lookups.

Backends only answer raw strings; this front lowercases keys (upstream
table_lookup), parses results into typed values and keeps the round-robin
of source tables.  ``open_table(tabledef)`` is the one way to get a Table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

from smtpd.config.model import TableDef
from smtpd.table.file import FileBackend
from smtpd.table.getpwnam import GetpwnamBackend
from smtpd.table.match import (
    Credentials,
    MailAddr,
    UserInfo,
    parse_credentials,
    parse_mailaddrmap,
    parse_userinfo,
    split_list,
)
from smtpd.table.service import Service, TableError, TableTempFail
from smtpd.table.sqlite import SqliteBackend
from smtpd.table.static import StaticBackend

__all__ = [
    "REGISTRY",
    "Service",
    "Table",
    "TableBackend",
    "TableError",
    "TableTempFail",
    "open_table",
]


class TableBackend(Protocol):
    """What a backend provides.  Keys arrive lowercased.

    lookup: the raw value for ``key`` (None: not found); for list tables
    the matching entry.  check: does ``key`` match (domain wildcards,
    networks, addresses, regexes for list tables).  fetch: every value, for
    source tables.  update: reload (``smtpctl update table``); on failure
    the old content stays and TableError is raised.  Errors: TableError
    (permanent: configuration) or TableTempFail (retry later).
    """

    services: Service

    def open(self) -> None: ...
    def close(self) -> None: ...
    def update(self) -> None: ...
    def lookup(self, service: Service, key: str) -> str | None: ...
    def check(self, service: Service, key: str) -> bool: ...
    def fetch(self, service: Service) -> tuple[str, ...]: ...


Factory = Callable[[TableDef, str], TableBackend]


def _static(t: TableDef, delim: str) -> TableBackend:
    return StaticBackend(t.entries, delim)


def _file(t: TableDef, delim: str) -> TableBackend:
    if t.config is None:
        raise TableError(f"table {t.name}: no file")
    return FileBackend(t.config, delim)


def _sqlite(t: TableDef, delim: str) -> TableBackend:
    if t.config is None:
        raise TableError(f"table {t.name}: no sqlite configuration file")
    return SqliteBackend(t.config)


def _postgres(t: TableDef, delim: str) -> TableBackend:
    if t.config is None:
        raise TableError(f"table {t.name}: no postgres configuration file")
    # imported on use (preloaded before a privilege drop by smtpd.proc): psycopg
    # costs every process ~16 MB that most configurations never need
    from smtpd.table.postgres import PostgresBackend
    return PostgresBackend(t.config)


def _redis(t: TableDef, delim: str) -> TableBackend:
    if t.config is None:
        raise TableError(f"table {t.name}: no redis configuration file")
    from smtpd.table.redis import RedisBackend
    return RedisBackend(t.config)


def _getpwnam(t: TableDef, delim: str) -> TableBackend:
    return GetpwnamBackend()


# name -> factory; smtpd.config.builder.SUPPORTED_BACKENDS lists the same
# names (a test keeps them in sync)
REGISTRY: Mapping[str, Factory] = MappingProxyType({
    "static": _static,
    "file": _file,
    "sqlite": _sqlite,
    "getpwnam": _getpwnam,
    "postgres": _postgres,
    "redis": _redis,
})


class Table:
    """An open table: raw and typed lookups over one backend."""

    def __init__(self, definition: TableDef, backend: TableBackend) -> None:
        self.definition = definition
        self.name = definition.name
        self.backend = backend
        self._next_source = 0

    def open(self) -> None:
        self.backend.open()

    def close(self) -> None:
        self.backend.close()

    def update(self) -> None:
        self.backend.update()

    def lookup(self, service: Service, key: str) -> str | None:
        return self.backend.lookup(service, key.lower())

    def match(self, service: Service, key: str) -> bool:
        """Condition matching (``from src <t>``, ``for domain <t>``...)."""
        return self.backend.check(service, key.lower())

    def fetch(self, service: Service) -> tuple[str, ...]:
        return self.backend.fetch(service)

    # -- typed lookups -----------------------------------------------------

    def alias(self, key: str) -> tuple[str, ...] | None:
        """aliases(5) expansion of ``key``: ``user``, ``user@dom``, ``/file``,
        ``|command``, ``:include:/path``, ``error:code text``."""
        value = self.lookup(Service.ALIAS, key)
        return None if value is None else split_list(value)

    def credentials(self, user: str) -> Credentials | None:
        value = self.lookup(Service.CREDENTIALS, user)
        return None if value is None else parse_credentials(user.lower(), value)

    def userinfo(self, user: str) -> UserInfo | None:
        value = self.lookup(Service.USERINFO, user)
        return None if value is None else parse_userinfo(user.lower(), value)

    def mailaddrmap(self, key: str) -> tuple[MailAddr, ...] | None:
        value = self.lookup(Service.MAILADDRMAP, key)
        return None if value is None else parse_mailaddrmap(key, value)

    def relayhost(self, domain: str) -> str | None:
        return self.lookup(Service.RELAYHOST, domain)

    def addrname(self, address: str) -> str | None:
        return self.lookup(Service.ADDRNAME, address)

    def next_source(self) -> str | None:
        """Round robin over a source table (``relay src <t>``)."""
        values = self.fetch(Service.SOURCE)
        if not values:
            return None
        value = values[self._next_source % len(values)]
        self._next_source += 1
        return value


def open_table(definition: TableDef, subaddr_delim: str = "+") -> Table:
    """Build and open the table ``definition`` (TableError if impossible)."""
    factory = REGISTRY.get(definition.backend)
    if factory is None:
        raise TableError(f'table {definition.name}: backend "{definition.backend}" '
                         "is not supported")
    table = Table(definition, factory(definition, subaddr_delim))
    table.open()
    return table
