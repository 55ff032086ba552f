"""postgres: OpenSMTPD-extras' table-postgres, with psycopg 3 and a pool.

The table's path names a config file of ``key value`` lines (``#``
comments), as upstream's table-postgres(5)::

    conninfo          host=db.example.org dbname=mail user=smtpd password=...
    timeout           2
    pool_size         4
    query_alias       SELECT destination FROM virtuals WHERE email=$1;
    query_domain      SELECT domain FROM domains WHERE domain=$1;
    query_credentials SELECT email, password FROM users WHERE email=$1;
    query_userinfo    SELECT uid, gid, maildir FROM users WHERE email=$1;
    query_fetch_source SELECT address FROM sources;

Queries take the key as ``$1`` (upstream's spelling) or ``%s``; rows are
turned into values as the sqlite backend does (same services, same column
counts).  The key is always a bound parameter, never spliced into SQL.

Every database problem at lookup time (server down, connection lost,
statement or pool timeout, a query the server rejects) is a TableTempFail:
the client gets 451 and retries, never a 5xx for an outage.  The pool checks
a connection before lending it, so a restarted server is reconnected to on
the next lookup.  ``update()`` (``smtpctl update table``) re-reads the file
and replaces the pool.
"""

from __future__ import annotations

import re

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from smtpd.table.service import Service, TableError, TableTempFail
from smtpd.table.sqlite import QUERY_KEYS, queried_services, value_from_rows

DEFAULT_TIMEOUT = 2.0  # seconds: connect, statement and pool wait
DEFAULT_POOL_SIZE = 4
_DOLLAR_ONE = re.compile(r"\$1\b")


def to_psycopg(query: str) -> str:
    """``$1`` -> ``%s``; literal ``%`` doubled (psycopg's placeholder syntax)."""
    if "%s" in query and "$1" not in query:
        return query.replace("%", "%%").replace("%%s", "%s")
    return _DOLLAR_ONE.sub("%s", query.replace("%", "%%"))


class PgConfig:
    def __init__(self, text: str, path: str) -> None:
        self.conninfo: str | None = None
        self.timeout = DEFAULT_TIMEOUT
        self.pool_size = DEFAULT_POOL_SIZE
        self.queries: dict[Service, str] = {}
        self.fetch: str | None = None
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            key, value = parts[0], (parts[1].strip() if len(parts) > 1 else "")
            if not value:
                raise TableError(f"{path}:{lineno}: {key} needs a value")
            if key == "conninfo":
                self.conninfo = value
            elif key in ("timeout", "pool_size"):
                try:
                    number = float(value)
                except ValueError:
                    raise TableError(f"{path}:{lineno}: {key}: not a number: {value}") from None
                if number <= 0:
                    raise TableError(f"{path}:{lineno}: {key} must be positive")
                if key == "timeout":
                    self.timeout = number
                else:
                    self.pool_size = max(1, int(number))
            elif key in ("query_fetch_source", "fetch_source"):
                self.fetch = to_psycopg(value)
            elif key in QUERY_KEYS:
                self.queries[QUERY_KEYS[key]] = to_psycopg(value)
            elif key == "fetch_interval":
                continue
            else:
                raise TableError(f"{path}:{lineno}: unknown key {key}")
        if self.conninfo is None:
            raise TableError(f"{path}: no conninfo")
        try:
            psycopg.conninfo.conninfo_to_dict(self.conninfo)
        except psycopg.Error as e:
            raise TableError(f"{path}: conninfo: {e}") from None

    @property
    def services(self) -> Service:
        return queried_services(self.queries, self.fetch)


class PostgresBackend:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.services = Service(0)
        self._config: PgConfig | None = None
        self._pool: ConnectionPool | None = None

    def _read_config(self) -> PgConfig:
        try:
            with open(self.config_path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise TableError(f"{self.config_path}: {e}") from None
        return PgConfig(text, self.config_path)

    def _make_pool(self, cfg: PgConfig) -> ConnectionPool:
        assert cfg.conninfo is not None
        ms = int(cfg.timeout * 1000)
        return ConnectionPool(
            cfg.conninfo,
            min_size=1,
            max_size=cfg.pool_size,
            # A server that does not answer must not hang the lookup process:
            # bounded connect, statement and wait-for-a-connection times.
            kwargs={"autocommit": True, "connect_timeout": max(1, round(cfg.timeout)),
                    "options": f"-c statement_timeout={ms}"},
            timeout=cfg.timeout,
            reconnect_timeout=0,  # keep trying to reconnect forever
            check=ConnectionPool.check_connection,
            open=False,
            name=f"table:{self.config_path}",
        )

    def open(self) -> None:
        """Reads the config (a bad file is a TableError now).  The database
        itself may be down: lookups then fail with TableTempFail."""
        cfg = self._read_config()
        pool = self._make_pool(cfg)
        pool.open(wait=False)
        self.close()
        self._config, self._pool = cfg, pool
        self.services = cfg.services

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close(timeout=1.0)
            self._pool = None

    def update(self) -> None:
        # A bad new file raises before the old pool is touched.
        self.open()

    def _rows(self, query: str, args: tuple[str, ...]) -> list[tuple[object, ...]]:
        if self._pool is None:
            self.open()
        assert self._pool is not None
        try:
            with self._pool.connection() as conn:
                return list(conn.execute(query, args).fetchall())
        except PoolTimeout as e:
            raise TableTempFail(f"{self.config_path}: no database connection: {e}") from None
        except psycopg.Error as e:
            raise TableTempFail(f"{self.config_path}: {type(e).__name__}: {e}") from None

    def lookup(self, service: Service, key: str) -> str | None:
        assert self._config is not None or self._pool is None
        query = self._config.queries.get(service) if self._config else None
        if query is None:
            raise TableError(f"{self.config_path}: no query for {service.name} lookups")
        return value_from_rows(service, self._rows(query, (key,)), self.config_path)

    def check(self, service: Service, key: str) -> bool:
        return self.lookup(service, key) is not None

    def fetch(self, service: Service) -> tuple[str, ...]:
        if self._config is None or self._config.fetch is None:
            raise TableError(f"{self.config_path}: no fetch_source query")
        return tuple(str(row[0]) for row in self._rows(self._config.fetch, ()) if row)
