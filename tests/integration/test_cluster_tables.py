"""postgres: and redis: tables in the running daemon (issue 14): virtual
domains and users for RCPT, credentials for AUTH, and 451 (never 5xx) when
the database is gone."""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import psycopg
import pytest
import redis
import trustme

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon, temp_workdir
from tests.integration.queue_helpers import wait_mails
from tests.servers import PgServer, RedisServer, redis_server

__all__ = ["redis_server"]

PASSWORD = "correct horse"

CONFIG = """
pki localhost cert "%(cert)s"
pki localhost key "%(key)s"
table domains %(backend)s:%(conf)s
table vusers %(backend)s:%(conf)s
table vbase %(backend)s:%(conf)s
table creds %(backend)s:%(conf)s
listen on 127.0.0.1 port %(port)d tls pki localhost auth-optional <creds>
action "virt" maildir "%(vmail)s/%%{user.username}" virtual <vusers> userbase <vbase>
match from any for domain <domains> action "virt"
"""

PG_TABLE = """conninfo %(conninfo)s
timeout 1
query_domain SELECT domain FROM domains WHERE domain=$1
query_alias SELECT destination FROM virtuals WHERE email=$1
query_credentials SELECT email, password FROM users WHERE email=$1
query_userinfo SELECT uid, gid, home FROM mailboxes WHERE name=$1
"""

REDIS_TABLE = """master 127.0.0.1:%(port)d
timeout 1
query_domain SISMEMBER domains %%s
query_alias SMEMBERS virtual:%%s
query_credentials HMGET user:%%s email password
query_userinfo HMGET mailbox:%%s uid gid home
"""


@dataclass(frozen=True)
class World:
    daemon: Daemon
    ca: trustme.CA
    port: int
    vmail: Path


def start_world(work: Path, backend: str, table_text: str) -> World:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = work / "cert.pem", work / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    conf = work / f"{backend}.conf"
    conf.write_text(table_text)
    conf.chmod(0o644)  # read by the unprivileged lookup process
    vmail = work / "vmail"
    vmail.mkdir()
    nobody = pwd.getpwnam("nobody")
    if os.geteuid() == 0:
        os.chown(vmail, nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    daemon = Daemon(work, CONFIG % {"cert": cert_path, "key": key_path, "backend": backend,
                                    "conf": conf, "port": port, "vmail": vmail})
    daemon.start()
    return World(daemon, ca, port, vmail)


def mailbox_row() -> tuple[int, int]:
    nobody = pwd.getpwnam("nobody")
    return (nobody.pw_uid, nobody.pw_gid) if os.geteuid() == 0 else (os.getuid(), os.getgid())


def hashed() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def pg_world() -> Iterator[tuple[World, PgServer]]:
    try:
        server = PgServer()
    except (FileNotFoundError, KeyError) as exc:
        pytest.skip(f"no PostgreSQL server binaries: {exc}")
    server.start()
    work = temp_workdir()
    world = None
    try:
        conninfo = server.create_database()
        uid, gid = mailbox_row()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE domains (domain text); CREATE TABLE virtuals"
                         " (email text, destination text); CREATE TABLE users (email text,"
                         " password text); CREATE TABLE mailboxes (name text, uid int,"
                         " gid int, home text)")
            conn.execute("INSERT INTO domains VALUES ('virt.test')")
            conn.execute("INSERT INTO virtuals VALUES ('bob@virt.test', 'vbob')")
            conn.execute("INSERT INTO users VALUES ('bob@virt.test', %s)", (hashed(),))
            conn.execute("INSERT INTO mailboxes VALUES ('vbob', %s, %s, %s)",
                         (uid, gid, str(work / "vhome")))
        world = start_world(work, "postgres", PG_TABLE % {"conninfo": conninfo})
        yield world, server
    finally:
        if world is not None:
            world.daemon.kill_group()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_world(redis_server: RedisServer) -> Iterator[World]:
    work = temp_workdir()
    uid, gid = mailbox_row()
    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    r.sadd("domains", "virt.test")
    r.sadd("virtual:bob@virt.test", "vbob")
    r.hset("user:bob@virt.test", mapping={"email": "bob@virt.test", "password": hashed()})
    r.hset("mailbox:vbob", mapping={"uid": uid, "gid": gid, "home": str(work / "vhome")})
    world = None
    try:
        world = start_world(work, "redis", REDIS_TABLE % {"port": redis_server.port})
        yield world
    finally:
        if world is not None:
            world.daemon.kill_group()
        shutil.rmtree(work, ignore_errors=True)


def session(world: World) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", world.port, timeout=20)
    s.ehlo("client.test")
    ctx = ssl.create_default_context()
    world.ca.configure_trust(ctx)
    s.starttls(context=ctx)
    s.ehlo("client.test")
    return s


def check_rcpt_auth_delivery(world: World) -> None:
    # a wrong password is refused, the right one accepted (RFC 4954)
    with session(world) as s, pytest.raises(smtplib.SMTPAuthenticationError):
        s.login("bob@virt.test", "wrong")
    with session(world) as s:
        assert s.login("bob@virt.test", PASSWORD)[0] == 235
        s.mail("bob@virt.test")
        assert s.rcpt("bob@virt.test")[0] == 250
        code, text = s.rcpt("nobody@virt.test")  # domain known, user not
        assert code == 550, text
        code, text = s.rcpt("bob@other.test")  # domain not in the table
        assert code == 550, text
        assert s.data(b"Subject: via table\r\n\r\nhello\r\n")[0] == 250
    (path,) = wait_mails(world.vmail / "vbob", 1, timeout=15)
    assert b"Subject: via table" in path.read_bytes()


def test_postgres_tables_serve_rcpt_and_auth(pg_world: tuple[World, PgServer]) -> None:
    check_rcpt_auth_delivery(pg_world[0])


def test_redis_tables_serve_rcpt_and_auth(redis_world: World) -> None:
    check_rcpt_auth_delivery(redis_world)


def test_postgres_outage_defers_with_451(pg_world: tuple[World, PgServer]) -> None:
    world, server = pg_world
    server.halt()
    try:
        with session(world) as s:
            s.mail("a@example.org")
            code, text = s.rcpt("bob@virt.test")
            assert 400 <= code < 500, (code, text)
    finally:
        server.start()
    with session(world) as s:  # back: reconnected without a restart
        s.mail("a@example.org")
        assert s.rcpt("bob@virt.test")[0] == 250
    out = world.daemon.smtpctl("update", "table", "domains")
    assert (out.returncode, out.stdout.strip()) == (0, "command succeeded")
