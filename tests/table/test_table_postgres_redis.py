"""postgres: and redis: tables against real throw-away servers (issue 14)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import redis

from smtpd.config.model import TableDef
from smtpd.table import Service, TableError, TableTempFail, open_table
from smtpd.table.postgres import to_psycopg
from tests.servers import PgServer, RedisServer, free_port, pg_db, pg_server, redis_server

__all__ = ["pg_db", "pg_server", "redis_server"]  # fixtures used by name

SCHEMA = """
CREATE TABLE domains (domain text PRIMARY KEY);
CREATE TABLE virtuals (email text, destination text);
CREATE TABLE users (email text PRIMARY KEY, password text, uid int, gid int, home text);
INSERT INTO domains VALUES ('example.org');
INSERT INTO virtuals VALUES ('info@example.org', 'alice'), ('info@example.org', 'bob');
INSERT INTO users VALUES ('alice@example.org', '$2b$08$hash', 1000, 1000, '/home/alice');
"""


def pg_table(tmp_path: Path, conninfo: str, extra: str = "") -> TableDef:
    conf = tmp_path / "pg.conf"
    conf.write_text(
        f"conninfo {conninfo}\n"
        "timeout 1\n"
        "# upstream's $1 placeholders\n"
        "query_domain SELECT domain FROM domains WHERE domain=$1;\n"
        "query_alias SELECT destination FROM virtuals WHERE email=$1 ORDER BY destination;\n"
        "query_credentials SELECT email, password FROM users WHERE email=$1;\n"
        "query_userinfo SELECT uid, gid, home FROM users WHERE email=%s;\n"
        "query_fetch_source SELECT '192.0.2.1';\n" + extra)
    return TableDef(name="pg", backend="postgres", config=str(conf), source="test")


def test_placeholder_translation() -> None:
    assert to_psycopg("SELECT a FROM t WHERE k=$1 AND b LIKE '%x'") == \
        "SELECT a FROM t WHERE k=%s AND b LIKE '%%x'"
    assert to_psycopg("SELECT a FROM t WHERE k=%s") == "SELECT a FROM t WHERE k=%s"


def test_postgres_lookups(pg_db: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    t = open_table(pg_table(tmp_path, pg_db))
    try:
        assert t.match(Service.DOMAIN, "EXAMPLE.org")
        assert not t.match(Service.DOMAIN, "example.net")
        assert t.alias("info@example.org") == ("alice", "bob")
        assert t.alias("nobody@example.org") is None
        cred = t.credentials("alice@example.org")
        assert cred is not None and cred.password == "$2b$08$hash"
        info = t.userinfo("alice@example.org")
        assert info is not None and (info.uid, info.gid, info.directory) == (1000, 1000, "/home/alice")
        assert t.fetch(Service.SOURCE) == ("192.0.2.1",)
        # the key is a bound parameter: quoting cannot change the query
        assert not t.match(Service.DOMAIN, "x' OR '1'='1")
        with pytest.raises(TableError):
            t.lookup(Service.RELAYHOST, "x")
    finally:
        t.close()


def test_postgres_outage_is_tempfail_and_reconnects(tmp_path: Path) -> None:
    try:
        server = PgServer()
    except (FileNotFoundError, KeyError) as exc:
        pytest.skip(f"no PostgreSQL server binaries: {exc}")
    server.start()
    try:
        conninfo = server.create_database()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SCHEMA)
        t = open_table(pg_table(tmp_path, conninfo))
        assert t.match(Service.DOMAIN, "example.org")
        server.halt()
        with pytest.raises(TableTempFail):
            t.match(Service.DOMAIN, "example.org")
        # back on the same port and data: the pool reconnects by itself
        server.start()
        assert t.match(Service.DOMAIN, "example.org")
        t.close()
    finally:
        server.stop()


def test_postgres_down_at_open_is_tempfail_not_fatal(tmp_path: Path) -> None:
    t = open_table(pg_table(tmp_path, f"host=127.0.0.1 port={free_port()} user=x dbname=x"))
    try:
        with pytest.raises(TableTempFail):
            t.match(Service.DOMAIN, "example.org")
    finally:
        t.close()


def test_postgres_slow_query_times_out_to_tempfail(pg_db: str, tmp_path: Path) -> None:
    extra = "query_string SELECT pg_sleep(5)::text || $1;\n"
    t = open_table(pg_table(tmp_path, pg_db, extra))
    try:
        with pytest.raises(TableTempFail):
            t.lookup(Service.STRING, "x")
    finally:
        t.close()


def test_postgres_update_rereads_config(pg_db: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    definition = pg_table(tmp_path, pg_db)
    t = open_table(definition)
    try:
        assert t.match(Service.DOMAIN, "example.org")
        assert definition.config is not None
        Path(definition.config).write_text(
            f"conninfo {pg_db}\nquery_domain SELECT 'x' WHERE $1 = 'other.test';\n")
        t.update()
        assert t.match(Service.DOMAIN, "other.test")
        assert not t.match(Service.DOMAIN, "example.org")
        Path(definition.config).write_text("bogus line\n")
        with pytest.raises(TableError):
            t.update()
        assert t.match(Service.DOMAIN, "other.test")  # old config kept
    finally:
        t.close()


def test_postgres_bad_config(tmp_path: Path) -> None:
    conf = tmp_path / "pg.conf"
    conf.write_text("query_domain SELECT 1\n")
    with pytest.raises(TableError, match="no conninfo"):
        open_table(TableDef(name="pg", backend="postgres", config=str(conf), source="t"))


# -- redis ---------------------------------------------------------------------


def redis_table(tmp_path: Path, port: int) -> TableDef:
    conf = tmp_path / "redis.conf"
    conf.write_text(
        f"master 127.0.0.1:{port}\n"
        "database 3\n"
        "timeout 1\n"
        "query_domain SISMEMBER domains %s\n"
        "query_alias SMEMBERS alias:%s\n"
        "query_credentials HMGET user:%s name password\n"
        "query_userinfo HMGET user:%s uid gid home\n"
        "query_relayhost GET relay:%s\n"
        "query_fetch_source SMEMBERS sources\n")
    return TableDef(name="rd", backend="redis", config=str(conf), source="test")


def test_redis_lookups(redis_server: RedisServer, tmp_path: Path) -> None:
    r = redis.Redis(host="127.0.0.1", port=redis_server.port, db=3)
    r.flushdb()
    r.sadd("domains", "example.org")
    r.sadd("alias:info@example.org", "alice", "bob")
    r.hset("user:alice@example.org", mapping={
        "name": "alice@example.org", "password": "$2b$08$hash",
        "uid": 1000, "gid": 1000, "home": "/home/alice"})
    r.set("relay:example.net", "smtp://mx.example.net")
    r.sadd("sources", "192.0.2.2", "192.0.2.1")
    t = open_table(redis_table(tmp_path, redis_server.port))
    try:
        assert t.match(Service.DOMAIN, "Example.ORG")
        assert not t.match(Service.DOMAIN, "example.net")
        assert t.alias("info@example.org") == ("alice", "bob")
        assert t.alias("x@example.org") is None
        cred = t.credentials("alice@example.org")
        assert cred is not None and cred.password == "$2b$08$hash"
        assert t.credentials("bob@example.org") is None
        info = t.userinfo("alice@example.org")
        assert info is not None and info.directory == "/home/alice"
        assert t.relayhost("example.net") == "smtp://mx.example.net"
        assert t.fetch(Service.SOURCE) == ("192.0.2.1", "192.0.2.2")
        # a key with spaces stays one argument
        assert not t.match(Service.DOMAIN, "a FLUSHALL b")
        assert r.scard("domains") == 1
    finally:
        t.close()


def test_redis_outage_is_tempfail_and_update(tmp_path: Path) -> None:
    try:
        server = RedisServer()
    except FileNotFoundError as exc:
        pytest.skip(f"no redis-server binary: {exc}")
    server.start()
    try:
        definition = redis_table(tmp_path, server.port)
        t = open_table(definition)
        redis.Redis(host="127.0.0.1", port=server.port, db=3).sadd("domains", "a.test")
        assert t.match(Service.DOMAIN, "a.test")
        server.stop()
        with pytest.raises(TableTempFail):
            t.match(Service.DOMAIN, "a.test")
        server2 = RedisServer().start()
        try:
            redis.Redis(host="127.0.0.1", port=server2.port, db=3).sadd("domains", "b.test")
            assert definition.config is not None
            text = Path(definition.config).read_text()
            Path(definition.config).write_text(
                text.replace(f":{server.port}", f":{server2.port}"))
            t.update()  # smtpctl update table: the new server
            assert t.match(Service.DOMAIN, "b.test")
            assert not t.match(Service.DOMAIN, "a.test")
        finally:
            server2.stop()
        t.close()
    finally:
        server.stop()
