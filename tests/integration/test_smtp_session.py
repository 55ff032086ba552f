"""Inbound SMTP sessions through the real daemon (smtp + lookup + queue): exact
replies (COMPAT.md §2), pipelining (RFC 2920), limits, the smuggling guard
(RFC 5321 §2.3.8), recipient checks, alias and virtual expansion as seen in the
spool's envelopes, and the session log lines.

One daemon for the module, started with `-P mda` so that envelopes stay in the
spool to be inspected; each test opens its own session(s).
"""

from __future__ import annotations

import pwd
import shutil
import smtplib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon, temp_workdir
from tests.integration.smtp_helpers import (
    ehlo_keywords,
    pause_mda,
    queued_msgids,
    raw_connect,
    read_replies,
    read_reply,
    wait_envelopes,
)

CONFIG = """
smtp max-message-size 10000
smtp limit max-rcpt 2
table aliases { "postmaster" = "root", "staff" = "root, alias-loop", "alias-loop" = "staff" }
table vusers { "alice@virt.test" = "vmail", "sales@virt.test" = "alice@virt.test" }
table vbase { "vmail" = "%(uid)d:%(gid)d:%(vhome)s" }
listen on 127.0.0.1 port %(port)d
listen on ::1 port %(port6)d
action "local" maildir "%(mail)s/%%{user.username}" alias <aliases>
action "virt" maildir "%(mail)s/virt/%%{user.username}" virtual <vusers> userbase <vbase>
action "out" relay
match from any for domain "virt.test" action "virt"
match from any for local action "local"
match from src 192.0.2.0/24 for any action "out"
"""


@dataclass(frozen=True)
class World:
    daemon: Daemon
    port: int
    port6: int

    def smtp(self) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        s.ehlo("client.test")
        return s


def free_port6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    work = temp_workdir()
    nobody = pwd.getpwnam("nobody")
    port, port6 = free_port(), free_port6()
    config = CONFIG % {"port": port, "port6": port6, "mail": work / "mail", "uid": nobody.pw_uid,
                       "gid": nobody.pw_gid, "vhome": work / "vhome"}
    daemon = Daemon(work, config, args=("-P", "mda"))
    try:
        daemon.start()
        pause_mda(daemon)
        yield World(daemon, port, port6)
    finally:
        daemon.kill_group()
        shutil.rmtree(work, ignore_errors=True)


def accepted_msgid(reply: tuple[int, bytes]) -> str:
    code, text = reply
    assert code == 250, reply
    words = text.decode().split()
    assert words[0] == "2.0.0" and words[2:] == ["Message", "accepted", "for", "delivery"]
    assert len(words[1]) == 8
    int(words[1], 16)
    return words[1]


# -- plain replies -----------------------------------------------------------------

def test_greeting_help_noop_rset_quit(world: World) -> None:
    sock = raw_connect(world.port)
    try:
        assert read_reply(sock) == (220, ["localhost ESMTP pysmtpd"])
        sock.sendall(b"HELO client.test\r\n")
        assert read_reply(sock) == (
            250, ["localhost Hello client.test [127.0.0.1], pleased to meet you"])
        sock.sendall(b"HELP\r\n")
        assert read_reply(sock) == (214, [
            "2.0.0 This is pysmtpd",
            "2.0.0 To report bugs in the implementation, please contact the pysmtpd "
            "maintainers",
            "2.0.0 with full details",
            "2.0.0 End of HELP info"])
        sock.sendall(b"NOOP\r\n")
        assert read_reply(sock) == (250, ["2.0.0 Ok"])
        sock.sendall(b"RSET\r\n")
        assert read_reply(sock) == (250, ["2.0.0 Reset state"])
        sock.sendall(b"DATA\r\n")
        assert read_reply(sock) == (
            503, ["5.5.1 Invalid command: Command not allowed at this point."])
        sock.sendall(b"QUIT\r\n")
        assert read_reply(sock) == (221, ["2.0.0 Bye"])
        assert sock.recv(1) == b""
    finally:
        sock.close()


def test_ehlo_advertises_configured_size(world: World) -> None:
    assert ehlo_keywords(world.port) == [
        "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE", "DSN", "PIPELINING", "SMTPUTF8", "CHUNKING", "HELP"]
    with world.smtp() as s:
        assert s.esmtp_features["size"] == "10000"


# -- pipelining ---------------------------------------------------------------------

def test_pipelined_transaction_in_one_write(world: World) -> None:
    sock = raw_connect(world.port)
    try:
        sock.sendall(b"EHLO client.test\r\n"
                     b"MAIL FROM:<pipe@client.test>\r\n"
                     b"RCPT TO:<root@localhost>\r\n"
                     b"RCPT TO:<no-such-user@localhost>\r\n"
                     b"DATA\r\n"
                     b"Subject: pipelined\r\n\r\nall at once\r\n.\r\n"
                     b"NOOP\r\n"
                     b"QUIT\r\n")
        replies = read_replies(sock, 9)
    finally:
        sock.close()
    codes = [code for code, _ in replies]
    assert codes == [220, 250, 250, 250, 550, 354, 250, 250, 221], replies
    assert replies[3] == (250, ["2.1.5 Destination address valid: Recipient ok"])
    assert replies[4] == (550, ["Invalid recipient: <no-such-user@localhost>"])
    assert replies[5] == (354, ['Enter mail, end with "." on a line by itself'])
    msgid = accepted_msgid((250, replies[6][1][0].encode()))
    envs = wait_envelopes(world.daemon, msgid)
    assert [(e["sender"], e["rcpt"]) for e in envs] == [("pipe@client.test", "root@localhost")]


# -- limits ----------------------------------------------------------------------

def test_oversized_message_drained_then_552_and_session_usable(world: World) -> None:
    before = queued_msgids(world.daemon.spool)
    with world.smtp() as s:
        s.mail("big@client.test")
        s.rcpt("root@localhost")
        body = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 200  # ~14 kB
        assert s.data(body) == (
            552, b"5.3.4 Message too big for system: Transaction failed, message too big")
        assert s.noop() == (250, b"2.0.0 Ok")
        s.mail("small@client.test")
        s.rcpt("root@localhost")
        msgid = accepted_msgid(s.data(b"Subject: small\r\n\r\nfits\r\n"))
    assert set(queued_msgids(world.daemon.spool)) - set(before) == {msgid}


def test_size_parameter_above_limit_refused_at_mail(world: World) -> None:
    with world.smtp() as s:
        assert s.mail("big@client.test", ["SIZE=20000"]) == (
            552, b"5.3.4 Message too big for system: Message size exceeds fixed maximum "
                 b"message size")


def test_too_many_recipients(world: World) -> None:
    with world.smtp() as s:
        s.mail("many@client.test")
        assert s.rcpt("root@localhost")[0] == 250
        assert s.rcpt("postmaster@localhost")[0] == 250
        assert s.rcpt("staff@localhost") == (
            451, b"4.5.3 Too many recipients: Too many recipients")


def test_bad_command_budget_ends_in_421(world: World) -> None:
    sock = raw_connect(world.port)
    try:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\n")
        read_reply(sock)
        sock.sendall(b"FOO\r\n" * 11)
        replies = read_replies(sock, 11)
        assert replies[:10] == [(500, ["5.5.1 Invalid command: Command unrecognized"])] * 10
        assert replies[10] == (421, ["4.7.0 Too many bad commands, closing connection"])
        assert sock.recv(1) == b""
    finally:
        sock.close()


# -- smuggling ------------------------------------------------------------------

@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n",
                                      b"\r\n.\r"])
def test_smuggling_never_makes_a_second_message(world: World, fake_end: bytes) -> None:
    """6.8 ends DATA at <LF>.<LF>; here only CRLF.CRLF ends it, the bare CR/LF
    is refused and the text after it is never executed (COMPAT.md §1)."""
    before = queued_msgids(world.daemon.spool)
    sock = raw_connect(world.port)
    try:
        sock.sendall(b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n"
                     b"RCPT TO:<root@localhost>\r\nDATA\r\n")
        assert [c for c, _ in read_replies(sock, 5)] == [220, 250, 250, 250, 354]
        sock.sendall(b"Subject: first\r\n\r\nhello" + fake_end +
                     b"MAIL FROM:<smuggled@evil.test>\r\n"
                     b"RCPT TO:<root@localhost>\r\n"
                     b"DATA\r\n"
                     b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
                     b"NOOP\r\n")
        code, lines = read_reply(sock)
        assert 500 <= code < 600, (code, lines)
        assert lines == ["5.5.2 Syntax error: bare CR or LF in message data, see RFC 5321 "
                         "section 2.3.8"]
        assert read_reply(sock) == (250, ["2.0.0 Ok"])  # the NOOP, nothing else
        sock.sendall(b"QUIT\r\n")
        assert read_reply(sock) == (221, ["2.0.0 Bye"])
    finally:
        sock.close()
    assert queued_msgids(world.daemon.spool) == before
    assert "smuggled@evil.test" not in world.daemon.log_text()


# -- recipients -------------------------------------------------------------------

def test_unknown_local_user(world: World) -> None:
    with world.smtp() as s:
        s.mail("a@client.test")
        assert s.rcpt("x@localhost") == (550, b"Invalid recipient: <x@localhost>")
        assert s.rcpt("nobody-here@virt.test") == (
            550, b"Invalid recipient: <nobody-here@virt.test>")


def test_relay_denied_from_a_non_matching_source(world: World) -> None:
    with world.smtp() as s:
        s.mail("a@client.test")
        assert s.rcpt("bob@remote.example") == (
            550, b"5.7.1 Delivery not authorized, message refused: relay denied")


def test_alias_expansion_in_spool(world: World) -> None:
    with world.smtp() as s:
        s.mail("a@client.test")
        assert s.rcpt("postmaster@localhost")[0] == 250
        msgid = accepted_msgid(s.data(b"Subject: alias\r\n\r\nto postmaster\r\n"))
    (env,) = wait_envelopes(world.daemon, msgid)
    assert env["dispatcher"] == "local"
    assert env["type"] == "mda"
    assert env["rcpt"] == "postmaster@localhost"
    assert env["mda-user"] == "root"


def test_alias_loop_ends_with_one_mailbox(world: World) -> None:
    with world.smtp() as s:
        s.mail("a@client.test")
        assert s.rcpt("staff@localhost")[0] == 250
        msgid = accepted_msgid(s.data(b"Subject: loop\r\n\r\nstaff\r\n"))
    envs = wait_envelopes(world.daemon, msgid)
    assert [e["mda-user"] for e in envs] == ["root"]


def test_virtual_user_expansion_in_spool(world: World) -> None:
    with world.smtp() as s:
        s.mail("a@client.test")
        assert s.rcpt("alice@virt.test")[0] == 250
        assert s.rcpt("sales@virt.test")[0] == 250
        msgid = accepted_msgid(s.data(b"Subject: virtual\r\n\r\nhi alice\r\n"))
    envs = wait_envelopes(world.daemon, msgid)
    assert sorted(e["rcpt"] for e in envs) == ["alice@virt.test", "sales@virt.test"]
    for env in envs:
        assert env["dispatcher"] == "virt"
        assert env["mda-user"] == "vmail"
        assert env["dest"].partition("@")[0] == "vmail"


# -- logs ------------------------------------------------------------------------

def test_session_log_lines(world: World) -> None:
    with world.smtp() as s:
        s.mail("logged@client.test")
        s.rcpt("root@localhost")
        msgid = accepted_msgid(s.data(b"Subject: log\r\n\r\nlog me\r\n"))
        s.rcpt("x@localhost")  # out of sequence after the message: a failed command
    d = world.daemon
    line = d.wait_for(rf"smtp message msgid={msgid} ")
    sid = line.split()[0]
    assert len(sid) == 16
    d.wait_for(rf"^{sid} smtp connected address=127\.0\.0\.1 host=")
    d.wait_for(rf"^{sid} smtp message msgid={msgid} size=\d+ nrcpt=1 proto=ESMTP$")
    d.wait_for(rf"^{sid} smtp envelope evpid={msgid}[0-9a-f]{{8}} "
               r"from=<logged@client\.test> to=<root@localhost>$")
    d.wait_for(rf'^{sid} smtp failed-command command="rcpt to:<x@localhost>" '
               r'result="503 5\.5\.1 Invalid command: Command not allowed at this point\."$')
    d.wait_for(rf"^{sid} smtp disconnected reason=quit$")


# -- rollback -------------------------------------------------------------------

def wait_incoming_empty(world: World, timeout: float = 5.0) -> list[str]:
    incoming = world.daemon.spool / "incoming"
    deadline = time.monotonic() + timeout
    while (left := sorted(p.name for p in incoming.iterdir())) and (
            time.monotonic() < deadline):
        time.sleep(0.05)
    return left


def test_rset_and_disconnect_roll_back_the_incoming_message(world: World) -> None:
    before = queued_msgids(world.daemon.spool)
    with world.smtp() as s:
        s.mail("gone@client.test")
        s.rcpt("root@localhost")
        assert list((world.daemon.spool / "incoming").iterdir())  # being received
        assert s.rset() == (250, b"2.0.0 Reset state")
        assert wait_incoming_empty(world) == []
    sock = raw_connect(world.port)
    try:
        sock.sendall(b"EHLO client.test\r\nMAIL FROM:<cut@client.test>\r\n"
                     b"RCPT TO:<root@localhost>\r\nDATA\r\n")
        assert [c for c, _ in read_replies(sock, 5)] == [220, 250, 250, 250, 354]
        sock.sendall(b"Subject: cut\r\n\r\nhalf a message")
    finally:
        sock.close()
    assert wait_incoming_empty(world) == []
    assert queued_msgids(world.daemon.spool) == before


# -- smtpctl ----------------------------------------------------------------------

def test_pause_smtp_refuses_new_sessions_until_resumed(world: World) -> None:
    d = world.daemon
    assert d.smtpctl("pause", "smtp").stdout.strip() == "command succeeded"
    try:
        d.wait_for(r"smtp: paused")
        sock = raw_connect(world.port)
        try:
            assert read_reply(sock) == (421, ["4.3.0 Service temporarily paused"])
            assert sock.recv(1) == b""
        finally:
            sock.close()
    finally:
        assert d.smtpctl("resume", "smtp").stdout.strip() == "command succeeded"
    d.wait_for(r"smtp: resumed")
    with world.smtp() as s:
        assert s.noop() == (250, b"2.0.0 Ok")


# -- extensions -------------------------------------------------------------------

def test_dsn_parameters_reach_the_envelope(world: World) -> None:
    """RFC 3461 §4: NOTIFY, ORCPT, RET and ENVID are kept per envelope."""
    with world.smtp() as s:
        assert s.mail("dsn@client.test", ["RET=HDRS", "ENVID=env+2Did"])[0] == 250
        assert s.rcpt("root@localhost",
                      ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;orig@client.test"])[0] == 250
        msgid = accepted_msgid(s.data(b"Subject: dsn\r\n\r\nnotify me\r\n"))
    (env,) = wait_envelopes(world.daemon, msgid)
    assert set(env["dsn-notify"].split()) == {"success", "delay"}
    assert env["dsn-orcpt"] == "orig@client.test"
    assert env["dsn-ret"] == "HDRS"
    assert env["dsn-envid"] == "env-id"


def test_smtputf8_sender_needs_the_parameter(world: World) -> None:
    sock = raw_connect(world.port)
    try:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\n")
        read_reply(sock)
        sock.sendall("MAIL FROM:<jösé@client.test>\r\n".encode())
        assert read_reply(sock) == (553, ["5.6.7 Non-ASCII address requires SMTPUTF8"])
        sock.sendall("MAIL FROM:<jösé@client.test> SMTPUTF8\r\n".encode())
        assert read_reply(sock) == (250, ["2.0.0 Ok"])
        sock.sendall(b"RCPT TO:<root@localhost>\r\nDATA\r\n")
        assert [c for c, _ in read_replies(sock, 2)] == [250, 354]
        sock.sendall("Subject: ünïcode\r\n\r\nhé\r\n.\r\n".encode())
        code, lines = read_reply(sock)
        assert code == 250, lines
        msgid = lines[0].split()[1]
    finally:
        sock.close()
    (env,) = wait_envelopes(world.daemon, msgid)
    assert env["sender"] == "jösé@client.test"


def test_parallel_sessions_each_get_their_own_message(world: World) -> None:
    """Requests to queue and lookup are paired by reqid: 20 interleaved
    sessions must each get their own msgid and envelope."""
    def one(i: int) -> tuple[int, str]:
        with world.smtp() as s:
            s.mail(f"par{i}@client.test")
            s.rcpt("root@localhost")
            return i, accepted_msgid(s.data(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()))

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert len({msgid for _, msgid in results}) == 20
    for i, msgid in results:
        (env,) = wait_envelopes(world.daemon, msgid)
        assert env["sender"] == f"par{i}@client.test"


# -- exact error replies (COMPAT.md §2) --------------------------------------------

@pytest.mark.parametrize(("setup", "line", "expected"), [
    ([], b"EHLO", (501, ["5.5.1 Invalid command: EHLO requires domain name"])),
    ([], b"VRFY root", (252, ["2.1.5 Cannot VRFY user, but will accept message and "
                              "attempt delivery"])),
    ([], b"EXPN staff", (502, ["5.5.1 Invalid command: Command not implemented"])),
    ([], b"NOOP " + b"x" * 600, (500, ["5.0.0 Command line too long"])),
    ([], b"MAIL FROM:<" + b"a" * 300 + b"@client.test>",
     (553, ["5.1.0 Sender address syntax error"])),
    ([b"MAIL FROM:<a@client.test>"], b"RCPT TO:<root@localhost> FOO=bar",
     (503, ["Unsupported option FOO=bar"])),
    ([b"MAIL FROM:<a@client.test>"], b"DATA",
     (503, ["5.5.4 Invalid command arguments: No recipient specified"])),
    ([b"MAIL FROM:<a@client.test>"], b"MAIL FROM:<b@client.test>",
     (503, ["5.5.1 Invalid command: Command not allowed at this point."])),
    ([], b"STARTTLS", (503, ["5.5.1 Invalid command: Command not supported"])),
    ([], b"AUTH PLAIN", (503, ["5.5.1 Invalid command: Command not supported"])),
])
def test_exact_replies(world: World, setup: list[bytes], line: bytes,
                       expected: tuple[int, list[str]]) -> None:
    sock = raw_connect(world.port)
    try:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\n")
        read_reply(sock)
        for cmd in setup:
            sock.sendall(cmd + b"\r\n")
            assert read_reply(sock)[0] == 250
        sock.sendall(line + b"\r\n")
        assert read_reply(sock) == expected
        sock.sendall(b"NOOP\r\n")  # the session goes on
        assert read_reply(sock) == (250, ["2.0.0 Ok"])
    finally:
        sock.close()


def test_ipv6_session_logged_with_bracketed_address(world: World) -> None:
    with smtplib.SMTP("::1", world.port6, timeout=10) as s:
        code, text = s.ehlo("client6.test")
        assert code == 250 and b" Hello client6.test [" in text
        s.mail("six@client.test")
        s.rcpt("root@localhost")
        msgid = accepted_msgid(s.data(b"Subject: v6\r\n\r\nover IPv6\r\n"))
        assert s.sock is not None
        port = s.sock.getsockname()[1]
    line = world.daemon.wait_for(rf"smtp connected address=\[::1\]:{port} ")
    sid = line.split()[0]
    world.daemon.wait_for(rf"^{sid} smtp message msgid={msgid} ")
    (env,) = wait_envelopes(world.daemon, msgid)
    assert "::1" in env["sockaddr"]
