"""Table backends: static, file, sqlite, getpwnam, and the typed front."""

from __future__ import annotations

import os
import pwd
import sqlite3
from pathlib import Path

import pytest

from smtpd.config.builder import SUPPORTED_BACKENDS
from smtpd.config.model import TableDef, TableEntryKind
from smtpd.table import REGISTRY, Service, TableError, TableTempFail, open_table
from smtpd.table.file import parse_table_text
from smtpd.table.sqlite import SqliteBackend


def static(*entries: tuple[str, str | None]) -> TableDef:
    kind = TableEntryKind.MAPPING if entries and entries[0][1] else TableEntryKind.LIST
    return TableDef(name="t", backend="static", config=None, source="x:1",
                    entries=entries, kind=kind)


def file_table(tmp_path: Path, text: str) -> TableDef:
    p = tmp_path / "table"
    p.write_text(text)
    return TableDef(name="t", backend="file", config=str(p), source="x:1")


def test_registry_matches_config_backends() -> None:
    assert set(REGISTRY) == set(SUPPORTED_BACKENDS)


def test_static_list_matching() -> None:
    t = open_table(static(("example.org", None), ("*.example.net", None), ("10.0.0.0/8", None),
                          ("@dom.test", None), ("bob@x.test", None), ("::1", None)))
    assert t.match(Service.DOMAIN, "EXAMPLE.org")
    assert t.match(Service.DOMAIN, "a.example.net")
    assert not t.match(Service.DOMAIN, "a.b.example.net")  # upstream wildcard: one label
    assert not t.match(Service.DOMAIN, "example.com")
    assert t.match(Service.NETADDR, "10.1.2.3")
    assert not t.match(Service.NETADDR, "11.1.2.3")
    assert t.match(Service.NETADDR, "::1")
    assert t.match(Service.MAILADDR, "anyone@DOM.test")
    assert t.match(Service.MAILADDR, "bob+tag@x.test")  # +tag ignored
    assert not t.match(Service.MAILADDR, "alice@x.test")
    assert t.match(Service.STRING, "example.org") and not t.match(Service.STRING, "nope")


def test_static_mapping_and_typed_lookups() -> None:
    t = open_table(static(("Root", "bob, |/usr/bin/x \"a, b\", /var/log/mail"),
                          ("bob", "1000:1000:/home/bob"), ("creds", "bob:$2b$hash"),
                          ("gil", "$2b$only"), ("senders", "a@b.test c@d.test")))
    assert t.alias("ROOT") == ("bob", '|/usr/bin/x "a, b"', "/var/log/mail")
    assert t.alias("nobody") is None
    info = t.userinfo("bob")
    assert info is not None and (info.uid, info.gid, info.directory) == (1000, 1000, "/home/bob")
    creds = t.credentials("creds")
    assert creds is not None and (creds.username, creds.password) == ("bob", "$2b$hash")
    creds = t.credentials("gil")
    assert creds is not None and (creds.username, creds.password) == ("gil", "$2b$only")
    senders = t.mailaddrmap("senders")
    assert senders is not None and [str(a) for a in senders] == ["a@b.test", "c@d.test"]
    with pytest.raises(TableTempFail):
        t.userinfo("root")  # malformed userinfo is not "not found"


def test_regex() -> None:
    t = open_table(static(("^mx[0-9]+\\.example\\.org$", None), ("(?i)^SPAM", None)))
    assert t.match(Service.REGEX, "mx12.example.org")
    assert not t.match(Service.REGEX, "www.example.org")
    assert t.match(Service.REGEX, "spammer.test")


def test_source_round_robin() -> None:
    t = open_table(static(("192.0.2.1", None), ("192.0.2.2", None)))
    assert [t.next_source() for _ in range(3)] == ["192.0.2.1", "192.0.2.2", "192.0.2.1"]


def test_file_formats(tmp_path: Path) -> None:
    aliases = "# aliases\nroot: bob, alice\n\nMAILER-DAEMON:  root\nabuse root\n"
    t = open_table(file_table(tmp_path, aliases))
    assert t.alias("root") == ("bob", "alice")
    assert t.alias("mailer-daemon") == ("root",)
    assert t.alias("abuse") == ("root",)
    t = open_table(file_table(tmp_path, "example.org\n*.example.net\n"))
    assert t.match(Service.DOMAIN, "www.example.net")
    # "# @list" forces a list even when entries contain blanks
    assert parse_table_text("# @list\na b\n", "f") == [("a b", None)]
    assert parse_table_text("[::1] host.test\n", "f") == [("[::1]", "host.test")]


def test_file_invalid_entry(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"table:2: invalid map entry"):
        open_table(file_table(tmp_path, "a b\nlonely\n"))
    with pytest.raises(TableError):
        open_table(TableDef(name="t", backend="file", config=str(tmp_path / "missing"),
                            source="x:1"))


def test_file_update_reloads_and_keeps_old_on_error(tmp_path: Path) -> None:
    d = file_table(tmp_path, "a: b\n")
    t = open_table(d)
    assert t.alias("a") == ("b",)
    Path(d.config or "").write_text("a: c\n")
    t.update()
    assert t.alias("a") == ("c",)
    Path(d.config or "").write_text("a: d\nbroken\n")
    with pytest.raises(TableError):
        t.update()
    assert t.alias("a") == ("c",)


def make_sqlite(tmp_path: Path) -> TableDef:
    db = tmp_path / "smtp.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE virtuals (key TEXT, value TEXT);
        INSERT INTO virtuals VALUES ('root@x.test', 'bob@x.test'), ('root@x.test', 'al@x.test');
        CREATE TABLE domains (domain TEXT);
        INSERT INTO domains VALUES ('x.test');
        CREATE TABLE credentials (username TEXT, password TEXT);
        INSERT INTO credentials VALUES ('bob@x.test', '$2b$08$hash');
        CREATE TABLE users (username TEXT, uid INT, gid INT, home TEXT);
        INSERT INTO users VALUES ('bob', 1000, 100, '/var/vmail/bob');
        CREATE TABLE sources (address TEXT);
        INSERT INTO sources VALUES ('192.0.2.7');
    """)
    conn.commit()
    conn.close()
    conf = tmp_path / "sqlite.conf"
    conf.write_text(f"""# table-sqlite configuration
dbpath {db}
query_alias SELECT value FROM virtuals WHERE key=?;
query_domain SELECT domain FROM domains WHERE domain=?;
query_credentials SELECT username, password FROM credentials WHERE username=?;
query_userinfo SELECT uid, gid, home FROM users WHERE username=?;
query_fetch_source SELECT address FROM sources;
""")
    return TableDef(name="sq", backend="sqlite", config=str(conf), source="x:1")


def test_sqlite(tmp_path: Path) -> None:
    t = open_table(make_sqlite(tmp_path))
    assert t.alias("root@x.test") == ("bob@x.test", "al@x.test")
    assert t.match(Service.DOMAIN, "X.TEST") and not t.match(Service.DOMAIN, "y.test")
    creds = t.credentials("bob@x.test")
    assert creds is not None and creds.password == "$2b$08$hash"
    info = t.userinfo("bob")
    assert info is not None and info.directory == "/var/vmail/bob"
    assert t.userinfo("nobody") is None
    assert t.next_source() == "192.0.2.7"
    with pytest.raises(TableError):
        t.lookup(Service.RELAYHOST, "x")  # no query for that service
    t.close()


def test_sqlite_locked_is_tempfail(tmp_path: Path) -> None:
    d = make_sqlite(tmp_path)
    backend = SqliteBackend(d.config or "", busy_timeout=0.05)
    backend.open()
    locker = sqlite3.connect(tmp_path / "smtp.sqlite", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TableTempFail, match="locked"):
            backend.lookup(Service.DOMAIN, "x.test")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert backend.lookup(Service.DOMAIN, "x.test") == "x.test"
    backend.close()


def test_sqlite_bad_config(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(f"dbpath {tmp_path / 'db'}\nquery_alias SELEKT nonsense\n")
    sqlite3.connect(tmp_path / "db").close()
    with pytest.raises(TableError, match="syntax error"):
        open_table(TableDef(name="b", backend="sqlite", config=str(conf), source="x:1"))
    conf.write_text("query_alias SELECT 1\n")
    with pytest.raises(TableError, match="no dbpath"):
        open_table(TableDef(name="b", backend="sqlite", config=str(conf), source="x:1"))


def test_getpwnam() -> None:
    me = pwd.getpwuid(os.getuid())
    t = open_table(TableDef(name="g", backend="getpwnam", config=None, source="x:1"))
    info = t.userinfo(me.pw_name)
    assert info is not None and (info.uid, info.directory) == (me.pw_uid, me.pw_dir)
    assert t.userinfo("no-such-user-pysmtpd") is None
    with pytest.raises(TableError):
        t.lookup(Service.ALIAS, "root")


def test_unsupported_backend() -> None:
    with pytest.raises(TableError, match="not supported"):
        open_table(TableDef(name="d", backend="db", config="/x.db", source="x:1"))
