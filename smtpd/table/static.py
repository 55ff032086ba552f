"""static: the inline tables of smtpd.conf (``{ a, b }`` / ``{ k = v }``).

Keys are lowercased on insert and lookup, as upstream (table_static_priv_add
and table_lookup); values keep their case.  Domain, netaddr, mailaddr and
regex services match every entry in order (upstream keycmp); the others
look the key up exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from smtpd.table.match import hostname_match, mailaddr_match, netaddr_match, regex_match
from smtpd.table.service import ALL_SERVICES, Service


class Entries:
    """An ordered mapping key -> value (None for a list entry) with
    upstream's matching rules."""

    def __init__(self, items: Iterable[tuple[str, str | None]], subaddr_delim: str = "+") -> None:
        self.items: dict[str, str | None] = {}
        for key, value in items:
            self.items[key.lower()] = value
        self.is_list = all(v is None for v in self.items.values())
        self._delim = subaddr_delim

    def _matcher(self, service: Service) -> Callable[[str, str], bool] | None:
        if service is Service.DOMAIN:
            return hostname_match
        if service is Service.NETADDR:
            return netaddr_match
        if service is Service.MAILADDR:
            delim = self._delim
            return lambda key, entry: mailaddr_match(key, entry, delim)
        if service is Service.REGEX:
            return regex_match
        return None

    def find(self, service: Service, key: str) -> tuple[str, str | None] | None:
        key = key.lower()
        match = self._matcher(service)
        if match is None:
            if key in self.items:
                return key, self.items[key]
            return None
        for entry, value in self.items.items():
            if match(key, entry):
                return entry, value
        return None

    def lookup(self, service: Service, key: str) -> str | None:
        found = self.find(service, key)
        if found is None:
            return None
        entry, value = found
        return value if value is not None else entry

    def check(self, service: Service, key: str) -> bool:
        return self.find(service, key) is not None

    def fetch(self) -> tuple[str, ...]:
        return tuple(self.items)


class StaticBackend:
    services = ALL_SERVICES

    def __init__(self, entries: Iterable[tuple[str, str | None]], subaddr_delim: str = "+") -> None:
        self._entries = Entries(entries, subaddr_delim)

    @property
    def is_list(self) -> bool:
        return self._entries.is_list

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def update(self) -> None:
        pass  # nothing to reload: the entries live in smtpd.conf

    def lookup(self, service: Service, key: str) -> str | None:
        return self._entries.lookup(service, key)

    def check(self, service: Service, key: str) -> bool:
        return self._entries.check(service, key)

    def fetch(self, service: Service) -> tuple[str, ...]:
        return self._entries.fetch()
