"""redis: OpenSMTPD-extras' table-redis, with redis-py.

The table's path names a config file of ``key value`` lines (``#``
comments), as upstream's table-redis(5)::

    master            127.0.0.1:6379       # or unix:/run/redis/redis.sock
    database          0
    password          secret
    timeout           2
    query_alias       SMEMBERS aliases:%s
    query_domain      SISMEMBER domains %s
    query_credentials HMGET user:%s name password
    query_userinfo    HMGET user:%s uid gid home
    query_fetch_source SMEMBERS sources

A query is one Redis command; in each of its arguments ``%s`` is replaced by
the key, and the arguments are sent as separate bulk strings, so a key can
never become another command (no injection).  Replies: nil, an empty array
or integer 0 is "not found"; a string is the value; an array is joined with
", " for aliases and mailaddrmap and with ":" otherwise (HMGET of the
credentials' and userinfo's fields; a nil field is not found); another
integer is its decimal text.

Connection errors and timeouts are TableTempFail (451), never "not found".
redis-py's pool reconnects on the next command after a lost connection;
``update()`` re-reads the file and replaces the client.
"""

from __future__ import annotations

import redis

from smtpd.table.service import Service, TableError, TableTempFail
from smtpd.table.sqlite import COLUMNS, JOINED, QUERY_KEYS, queried_services

DEFAULT_TIMEOUT = 2.0
DEFAULT_PORT = 6379


class RedisConfig:
    def __init__(self, text: str, path: str) -> None:
        self.host = "127.0.0.1"
        self.port = DEFAULT_PORT
        self.unix: str | None = None
        self.database = 0
        self.password: str | None = None
        self.timeout = DEFAULT_TIMEOUT
        self.queries: dict[Service, list[str]] = {}
        self.fetch: list[str] | None = None
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, *args = line.split()
            where = f"{path}:{lineno}"
            if not args:
                raise TableError(f"{where}: {key} needs a value")
            if key == "master":
                self._server(args[0], where)
            elif key == "slave":
                continue  # reads go to the master: one server is enough here
            elif key == "database":
                self.database = _number(args[0], where, key)
            elif key == "password":
                self.password = args[0]
            elif key == "timeout":
                try:
                    self.timeout = float(args[0])
                except ValueError:
                    raise TableError(f"{where}: timeout: not a number: {args[0]}") from None
            elif key in ("query_fetch_source", "fetch_source"):
                self.fetch = args
            elif key in QUERY_KEYS:
                self.queries[QUERY_KEYS[key]] = args
            elif key == "fetch_interval":
                continue
            else:
                raise TableError(f"{where}: unknown key {key}")

    def _server(self, value: str, where: str) -> None:
        if value.startswith("unix:"):
            self.unix = value[5:]
            return
        host, sep, port = value.rpartition(":")
        if not sep:
            host, port = value, str(DEFAULT_PORT)
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = _number(port, where, "master port")

    @property
    def services(self) -> Service:
        return queried_services(self.queries, self.fetch)


def _number(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise TableError(f"{where}: {what}: not a number: {text}") from None


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisBackend:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.services = Service(0)
        self._config: RedisConfig | None = None
        self._client: redis.Redis | None = None

    def _read_config(self) -> RedisConfig:
        try:
            with open(self.config_path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise TableError(f"{self.config_path}: {e}") from None
        return RedisConfig(text, self.config_path)

    def open(self) -> None:
        cfg = self._read_config()
        common = {"db": cfg.database, "password": cfg.password,
                  "socket_timeout": cfg.timeout, "socket_connect_timeout": cfg.timeout,
                  "health_check_interval": 30}
        if cfg.unix is not None:
            client = redis.Redis(unix_socket_path=cfg.unix, **common)  # type: ignore[arg-type]
        else:
            client = redis.Redis(host=cfg.host, port=cfg.port, **common)  # type: ignore[arg-type]
        self.close()
        self._config, self._client = cfg, client
        self.services = cfg.services

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def update(self) -> None:
        self.open()

    def _command(self, template: list[str], key: str) -> object:
        if self._client is None:
            self.open()
        assert self._client is not None
        args = [arg.replace("%s", key) for arg in template]
        try:
            return self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        except redis.ResponseError as e:
            # a wrong command or type: the data or the file is wrong, not the
            # recipient; defer so the operator can fix it
            raise TableTempFail(f"{self.config_path}: {args[0]}: {e}") from None
        except redis.RedisError as e:
            raise TableTempFail(f"{self.config_path}: redis: {e}") from None

    def lookup(self, service: Service, key: str) -> str | None:
        template = self._config.queries.get(service) if self._config else None
        if template is None:
            raise TableError(f"{self.config_path}: no query for {service.name} lookups")
        reply = self._command(template, key)
        if reply is None or reply == 0 or (isinstance(reply, list | set | tuple) and not reply):
            return None
        if isinstance(reply, list | set | tuple):
            items = sorted(reply, key=_text) if isinstance(reply, set) else list(reply)
            if service in JOINED:
                return ", ".join(_text(item) for item in items if item is not None)
            want = COLUMNS.get(service, len(items))
            if any(item is None for item in items[:want]):
                return None
            if len(items) < want:
                raise TableTempFail(f"{self.config_path}: {service.name} query must return "
                                    f"{want} fields")
            return ":".join(_text(item) for item in items[:want])
        return _text(reply)

    def check(self, service: Service, key: str) -> bool:
        return self.lookup(service, key) is not None

    def fetch(self, service: Service) -> tuple[str, ...]:
        if self._config is None or self._config.fetch is None:
            raise TableError(f"{self.config_path}: no fetch_source query")
        reply = self._command(self._config.fetch, "")
        if reply is None:
            return ()
        if isinstance(reply, list | set | tuple):
            return tuple(sorted(_text(item) for item in reply if item is not None))
        return (_text(reply),)
