"""End to end: a message accepted over SMTP reaches a Maildir under the work
dir (smtp -> queue -> scheduler -> queue -> parent's delivery child), for a
system user and for a virtual user mapped to another uid (COMPAT.md §2, the
delivered Maildir message)."""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon, temp_workdir
from tests.integration.smtp_helpers import queued_msgids

CONFIG = """
table vusers { "alice@virt.test" = "vmail" }
table vbase { "vmail" = "%(uid)d:%(gid)d:%(vhome)s" }
listen on 127.0.0.1 port %(port)d
action "local" maildir "%(mail)s/%%{user.username}"
action "virt" maildir "%(vmail)s/%%{user.username}" virtual <vusers> userbase <vbase>
match from any for domain "virt.test" action "virt"
match from any for local action "local"
"""


@dataclass(frozen=True)
class World:
    daemon: Daemon
    port: int
    mail: Path
    vmail: Path


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    work = temp_workdir()
    nobody = pwd.getpwnam("nobody")
    mail, vmail = work / "mail", work / "vmail"
    mail.mkdir()
    vmail.mkdir()
    # the virtual user's deliveries run as its uid: it owns its tree
    os.chown(vmail, nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    daemon = Daemon(work, CONFIG % {"port": port, "mail": mail, "vmail": vmail,
                                    "uid": nobody.pw_uid, "gid": nobody.pw_gid,
                                    "vhome": work / "vhome"})
    try:
        daemon.start()
        yield World(daemon, port, mail, vmail)
    finally:
        daemon.kill_group()
        shutil.rmtree(work, ignore_errors=True)


def wait_maildir(box: Path, count: int, timeout: float = 10.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        new = box / "new"
        files = sorted(new.iterdir()) if new.is_dir() else []
        if len(files) >= count:
            return files
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} message(s) expected in {new}, found {files}")
        time.sleep(0.05)


def send(world: World, rcpt: str, body: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", world.port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("sender@client.test")
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(body)
        assert code == 250, text
    return text.split()[1].decode()


def test_local_user_gets_the_message_in_maildir(world: World) -> None:
    # smtplib dot-stuffs the body on the wire; the stored copy is unstuffed
    msgid = send(world, "root@localhost",
                 b"Subject: hello root\r\n\r\nfirst line\r\n.dot line\r\n")
    (path,) = wait_maildir(world.mail / "root", 1)
    st = path.stat()
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o600
    data = path.read_bytes()
    assert b"\r\n" not in data  # LF line endings on disk
    assert data.startswith(b"Return-Path: <sender@client.test>\nDelivered-To: root@localhost\n"
                           b"Received: from client.test (")
    assert f"id {msgid}".encode() in data
    assert b"\nSubject: hello root\n" in data
    assert b"\nDate: " in data and b"\nMessage-ID: <" in data  # added when missing
    assert data.endswith(b"\n\nfirst line\n.dot line\n")
    deadline = time.monotonic() + 5
    while msgid in queued_msgids(world.daemon.spool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert msgid not in queued_msgids(world.daemon.spool)  # removed after delivery
    world.daemon.wait_for(rf"mda delivery evpid={msgid}[0-9a-f]{{8}} "
                          r"from=<sender@client\.test> to=<root@localhost> .*result=Ok")


def test_virtual_user_delivered_as_its_uid(world: World) -> None:
    send(world, "alice@virt.test", b"Subject: hi alice\r\n\r\nvirtual\r\n")
    (path,) = wait_maildir(world.vmail / "vmail", 1)
    nobody = pwd.getpwnam("nobody")
    assert path.stat().st_uid == nobody.pw_uid
    data = path.read_bytes()
    assert b"Delivered-To: alice@virt.test\n" in data
    assert data.endswith(b"\nvirtual\n")
