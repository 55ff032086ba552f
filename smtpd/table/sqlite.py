"""sqlite: OpenSMTPD-extras' table-sqlite, with the stdlib sqlite3.

The table's path names a config file of ``key value`` lines (``#``
comments)::

    dbpath            /etc/mail/smtp.sqlite
    query_alias       SELECT value FROM virtuals WHERE key=?;
    query_domain      SELECT domain FROM domains WHERE domain=?;
    query_credentials SELECT username, password FROM credentials WHERE username=?;
    query_userinfo    SELECT uid, gid, home FROM users WHERE username=?;
    query_fetch_source SELECT address FROM sources;

One query per service, each with one ``?`` for the key (none for
fetch_source).  Results as upstream: alias and mailaddrmap rows are joined
with ", "; credentials is two columns (user, password); userinfo three
(uid, gid, home); the others the first column of the first row.

Any sqlite error at lookup time (database locked, gone, corrupt) is a
TableTempFail: mail is deferred, never bounced, for a database problem.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from smtpd.table.service import Service, TableError, TableTempFail

QUERY_KEYS = {
    "query_alias": Service.ALIAS,
    "query_domain": Service.DOMAIN,
    "query_credentials": Service.CREDENTIALS,
    "query_netaddr": Service.NETADDR,
    "query_userinfo": Service.USERINFO,
    "query_source": Service.SOURCE,
    "query_mailaddr": Service.MAILADDR,
    "query_addrname": Service.ADDRNAME,
    "query_mailaddrmap": Service.MAILADDRMAP,
    "query_relayhost": Service.RELAYHOST,
    "query_string": Service.STRING,
}
COLUMNS = {Service.CREDENTIALS: 2, Service.USERINFO: 3}
JOINED = (Service.ALIAS, Service.MAILADDRMAP)


def queried_services(queries: Iterable[Service], fetch: object) -> Service:
    """What a table with these lookup queries (and a fetch query, for the
    source service) answers: the same for sqlite, postgres and redis."""
    services = Service(0)
    for service in queries:
        services |= service
    if fetch:
        services |= Service.SOURCE
    return services


def value_from_rows(service: Service, rows: list[tuple[object, ...]], where: str) -> str | None:
    """A lookup's answer from SQL rows, as table-sqlite/table-postgres give it:
    list services join every row, others take the first row's columns."""
    if not rows:
        return None
    if service in JOINED:
        return ", ".join(str(row[0]) for row in rows if row and row[0] is not None)
    row = rows[0]
    want = COLUMNS.get(service, 1)
    if len(row) < want or any(col is None for col in row[:want]):
        raise TableTempFail(f"{where}: {service.name} query must return {want} columns")
    return ":".join(str(col) for col in row[:want])


def parse_sqlite_config(text: str, path: str) -> tuple[str, dict[Service, str], str | None]:
    dbpath: str | None = None
    queries: dict[Service, str] = {}
    fetch: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if "\t" in key:
            key, _, rest = key.partition("\t")
            value = rest + " " + value
        value = value.strip()
        if not value:
            raise TableError(f"{path}:{lineno}: {key} needs a value")
        if key == "dbpath":
            dbpath = value
        elif key in ("query_fetch_source", "fetch_source"):
            fetch = value
        elif key in QUERY_KEYS:
            queries[QUERY_KEYS[key]] = value
        elif key == "fetch_interval":
            continue
        else:
            raise TableError(f"{path}:{lineno}: unknown key {key}")
    if dbpath is None:
        raise TableError(f"{path}: no dbpath")
    return dbpath, queries, fetch


class SqliteBackend:
    def __init__(self, config_path: str, busy_timeout: float = 1.0) -> None:
        self.config_path = config_path
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self.dbpath = ""
        self._queries: dict[Service, str] = {}
        self._fetch: str | None = None
        self.services = Service(0)

    def _read_config(self) -> None:
        try:
            with open(self.config_path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise TableError(f"{self.config_path}: {e}") from None
        self.dbpath, self._queries, self._fetch = parse_sqlite_config(text, self.config_path)
        self.services = queried_services(self._queries, self._fetch)

    def open(self) -> None:
        self._read_config()
        try:
            conn = sqlite3.connect(f"file:{self.dbpath}?mode=ro", uri=True,
                                   timeout=self.busy_timeout, check_same_thread=False)
        except sqlite3.Error as e:
            raise TableError(f"{self.config_path}: {self.dbpath}: {e}") from None
        try:
            # a query that does not compile is a configuration error: say it now
            for query in self._queries.values():
                conn.execute("EXPLAIN " + query, ("",))
            if self._fetch:
                conn.execute("EXPLAIN " + self._fetch)
        except sqlite3.Error as e:
            conn.close()
            raise TableError(f"{self.config_path}: {self.dbpath}: {e}") from None
        self.close()
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def update(self) -> None:
        self.close()
        self.open()

    def _rows(self, query: str, args: tuple[str, ...]) -> list[tuple[object, ...]]:
        if self._conn is None:
            self.open()
        assert self._conn is not None
        try:
            return self._conn.execute(query, args).fetchall()
        except sqlite3.Error as e:
            raise TableTempFail(f"{self.dbpath}: {e}") from None

    def lookup(self, service: Service, key: str) -> str | None:
        query = self._queries.get(service)
        if query is None:
            raise TableError(f"{self.config_path}: no query for {service.name} lookups")
        return value_from_rows(service, self._rows(query, (key,)), self.dbpath)

    def check(self, service: Service, key: str) -> bool:
        return self.lookup(service, key) is not None

    def fetch(self, service: Service) -> tuple[str, ...]:
        if self._fetch is None:
            raise TableError(f"{self.config_path}: no fetch_source query")
        return tuple(str(row[0]) for row in self._rows(self._fetch, ()) if row)
