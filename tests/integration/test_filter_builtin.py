"""Builtin filters through the real daemon: rdns tables and regexes, helo
and mail-from regexes, negation, junk, bypass, disconnect (issue 13)."""

from __future__ import annotations

import shutil
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon, temp_workdir
from tests.integration.smtp_helpers import raw_connect, read_reply

# Loopback clients have rdns "localhost" (answered without DNS, forward-confirmed).
CONFIG = """
table localnames { "localhost" }
table localre { "^local" }
table badhelo { "^evil[.]" }
table badsender { "@spam[.]test$" }
table trusted { "trusted@ok.test" }
table moved { "old-name@localhost" }
filter "rdns-table" phase connect match rdns <localnames> reject "550 5.7.1 rdns refused"
filter "rdns-regex" phase connect match rdns regex <localre> reject "554 5.7.1 regex refused"
filter "no-rdns" phase connect match !rdns reject "550 no rdns"
filter "helo" phase helo match helo regex <badhelo> disconnect "421 4.7.0 bad helo"
filter "ehlo" phase ehlo match helo regex <badhelo> reject "550 5.7.1 bad ehlo"
filter "bypass" phase mail-from match mail-from <trusted> bypass
filter "sender" phase mail-from match mail-from regex <badsender> reject "550 5.7.1 sender refused"
filter "junk" phase mail-from match !mail-from regex <badsender> junk
filter "rewrite" phase rcpt-to match rcpt-to <moved> rewrite "root@localhost"
filter "checks" chain { "no-rdns", "helo", "ehlo", "bypass", "sender", "junk", "rewrite" }
listen on 127.0.0.1 port %(p1)d filter "rdns-table"
listen on 127.0.0.1 port %(p2)d filter "rdns-regex"
listen on 127.0.0.1 port %(p3)d filter "checks"
action "local" maildir "%(mail)s/%%{user.username}"
match from any for local action "local"
"""


@dataclass(frozen=True)
class World:
    daemon: Daemon
    ports: tuple[int, int, int]
    mail: Path


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    work = temp_workdir()
    ports = (free_port(), free_port(), free_port())
    daemon = Daemon(work, CONFIG % {"p1": ports[0], "p2": ports[1], "p3": ports[2],
                                    "mail": work / "mail"})
    try:
        daemon.start()
        yield World(daemon, ports, work / "mail")
    finally:
        daemon.kill_group()
        shutil.rmtree(work, ignore_errors=True)


def greeting(port: int) -> tuple[int, list[str]]:
    sock = raw_connect(port)
    try:
        return read_reply(sock)
    finally:
        sock.close()


def test_reject_on_rdns_table(world: World) -> None:
    assert greeting(world.ports[0]) == (550, ["5.7.1 rdns refused"])
    world.daemon.wait_for(r"filter-response phase=connect filter=rdns-table")


def test_reject_on_rdns_regex(world: World) -> None:
    assert greeting(world.ports[1]) == (554, ["5.7.1 regex refused"])


def test_negated_rdns_lets_named_clients_in(world: World) -> None:
    code, _ = greeting(world.ports[2])
    assert code == 220


def test_helo_regex_disconnects(world: World) -> None:
    sock = raw_connect(world.ports[2])
    try:
        read_reply(sock)
        sock.sendall(b"HELO evil.example\r\n")
        assert read_reply(sock) == (421, ["4.7.0 bad helo"])
        assert sock.recv(100) == b""  # closed
    finally:
        sock.close()


def test_ehlo_regex_rejects_and_session_goes_on(world: World) -> None:
    sock = raw_connect(world.ports[2])
    try:
        read_reply(sock)
        sock.sendall(b"EHLO evil.example\r\n")
        assert read_reply(sock) == (550, ["5.7.1 bad ehlo"])
        sock.sendall(b"EHLO good.example\r\n")
        assert read_reply(sock)[0] == 250
    finally:
        sock.close()


def _send(port: int, sender: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        code, text = client.mail(sender)
        if code != 250:
            return code, text
        client.rcpt("root")
        client.data(b"Subject: hi\r\n\r\nbody\r\n")
        return code, text


def _delivered(mail: Path, marker: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in mail.glob("*/new/*"):
            text = path.read_text(errors="replace")
            if marker in text:
                return text
        time.sleep(0.05)
    raise AssertionError(f"no delivered message with {marker!r}")


def test_mail_from_regex_rejects(world: World) -> None:
    code, text = _send(world.ports[2], "bob@spam.test")
    assert (code, text) == (550, b"5.7.1 sender refused")


def test_junk_adds_x_spam_and_bypass_skips_the_rest(world: World) -> None:
    with smtplib.SMTP("127.0.0.1", world.ports[2], timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("someone@else.test")[0] == 250
        client.rcpt("root")
        client.data(b"Subject: junked\r\n\r\nbody\r\n")
        assert client.mail("trusted@ok.test")[0] == 250
        client.rcpt("root")
        client.data(b"Subject: trusted\r\n\r\nbody\r\n")
    assert "X-Spam: yes" in _delivered(world.mail, "Subject: junked")
    assert "X-Spam" not in _delivered(world.mail, "Subject: trusted")


def test_rewrite_changes_the_recipient(world: World) -> None:
    with smtplib.SMTP("127.0.0.1", world.ports[2], timeout=10) as client:
        client.ehlo("client.test")
        client.sendmail("someone@else.test", ["old-name@localhost"],
                        b"Subject: rewritten rcpt\r\n\r\nbody\r\n")
    text = _delivered(world.mail, "Subject: rewritten rcpt")
    assert "Delivered-To: root@localhost" in text
