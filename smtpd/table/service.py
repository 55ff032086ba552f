"""Table services and errors, shared by the front (backend.py) and backends.

A service is what the caller wants from a table (upstream enum
table_service, K_*): the same table may answer several.
"""

from __future__ import annotations

import enum


class Service(enum.Flag):
    ALIAS = enum.auto()  # user -> "a, b, |cmd, /file" (aliases(5))
    DOMAIN = enum.auto()  # domain list, "*.example.org" wildcards
    CREDENTIALS = enum.auto()  # user -> "hash" or "user:hash"
    NETADDR = enum.auto()  # address / CIDR list
    USERINFO = enum.auto()  # user -> "uid:gid:home"
    SOURCE = enum.auto()  # list of source addresses (fetched)
    MAILADDR = enum.auto()  # user@domain, @domain, user
    ADDRNAME = enum.auto()  # address -> host name (helo-src, hostnames)
    MAILADDRMAP = enum.auto()  # user -> "a@b, c@d" (senders)
    RELAYHOST = enum.auto()  # domain -> relay URL
    STRING = enum.auto()  # plain strings (tag, auth user lists)
    REGEX = enum.auto()  # POSIX extended regular expressions


ALL_SERVICES = (
    Service.ALIAS | Service.DOMAIN | Service.CREDENTIALS | Service.NETADDR | Service.USERINFO
    | Service.SOURCE | Service.MAILADDR | Service.ADDRNAME | Service.MAILADDRMAP
    | Service.RELAYHOST | Service.STRING | Service.REGEX
)


class TableError(Exception):
    """A table that cannot be opened or used: bad config file, unknown
    backend, a service the backend does not provide."""


class TableTempFail(TableError):
    """The answer is unknown right now (database locked or gone, I/O error,
    malformed data): the caller must defer (451), never treat it as
    "not found"."""
