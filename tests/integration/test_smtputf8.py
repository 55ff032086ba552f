"""SMTPUTF8 (RFC 6531-6533) end to end through the real daemon: a non-ASCII
local part reaches the Maildir of a virtual user, is relayed to a next hop
offering SMTPUTF8, and bounces with 553 5.6.7 when the next hop lacks it."""

from __future__ import annotations

import email
import os
import pwd
import time
from pathlib import Path

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon
from tests.integration.smtp_helpers import raw_connect, read_reply
from tests.integration.test_relay import ThreadedSink, wait_for
from tests.mta.sink import SinkConfig

USER = "jösé"
BODY = "Subject: ünïcode\r\nFrom: Jösé <jösé@virt.test>\r\n\r\nhéllo wörld\r\n".encode()


def config(workdir: Path, relay: str) -> str:
    nobody = pwd.getpwnam("nobody")
    return (f'table vusers {{ "{USER}@virt.test" = "vmail" }}\n'
            f'table vbase {{ "vmail" = "{nobody.pw_uid}:{nobody.pw_gid}:{workdir}/vhome" }}\n'
            f"listen on 127.0.0.1 port {free_port()}\n"
            f'action "local" maildir "{workdir}/mail/%{{user.username}}"\n'
            f'action "virt" maildir "{workdir}/vmail/%{{user.username}}" virtual <vusers> '
            "userbase <vbase>\n"
            f'action "out" relay host smtp://127.0.0.1:{relay}\n'
            'match from any for domain "virt.test" action "virt"\n'
            'match from any for local action "local"\n'
            'match from any for domain "remote.test" action "out"\n')


def start(workdir: Path, relay_port: int) -> Daemon:
    nobody = pwd.getpwnam("nobody")
    vmail = workdir / "vmail"
    vmail.mkdir(exist_ok=True)
    os.chown(vmail, nobody.pw_uid, nobody.pw_gid)
    return Daemon(workdir, config(workdir, str(relay_port))).start()


def submit(d: Daemon, sender: str, rcpt: str, smtputf8: bool = True,
           chunked: bool = False) -> list[tuple[int, list[str]]]:
    sock = raw_connect(d.port)
    try:
        assert read_reply(sock)[0] == 220
        param = " SMTPUTF8" if smtputf8 else ""
        wire = f"EHLO client.test\r\nMAIL FROM:<{sender}>{param}\r\nRCPT TO:<{rcpt}>\r\n"
        sock.sendall(wire.encode())
        out = [read_reply(sock) for _ in range(3)]
        if out[-1][0] != 250:
            return out
        if chunked:
            sock.sendall(b"BDAT %d LAST\r\n" % len(BODY) + BODY)
        else:
            sock.sendall(b"DATA\r\n")
            out.append(read_reply(sock))
            sock.sendall(BODY + b".\r\n")
        out.append(read_reply(sock))
        return out
    finally:
        sock.close()


def maildir_files(box: Path, count: int = 1, timeout: float = 15.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = box / "new"
        files = sorted(new.iterdir()) if new.is_dir() else []
        if len(files) >= count:
            return files
        time.sleep(0.05)
    raise AssertionError(f"nothing in {box}")


def test_utf8_local_part_delivered_to_a_virtual_user(workdir: Path) -> None:
    sink = ThreadedSink(SinkConfig(smtputf8=True))
    d = start(workdir, sink.port)
    try:
        # without SMTPUTF8 the address is refused (RFC 6531 §3.4)
        refused = submit(d, "ünï@client.test", f"{USER}@virt.test", smtputf8=False)
        assert refused[1][0] == 553 and refused[1][1][0].startswith("5.6.7")
        for chunked in (False, True):
            replies = submit(d, "ünï@client.test", f"{USER}@virt.test", chunked=chunked)
            assert replies[-1][0] == 250, replies
        files = maildir_files(workdir / "vmail" / "vmail", 2)
        for path in files:
            data = path.read_bytes()
            assert path.stat().st_uid == pwd.getpwnam("nobody").pw_uid
            assert data.startswith("Return-Path: <ünï@client.test>\n".encode())
            assert f"Delivered-To: {USER}@virt.test\n".encode() in data
            assert data.endswith("\n\nhéllo wörld\n".encode())
            assert "Subject: ünïcode\n".encode() in data
            assert b"(pysmtpd) with UTF8SMTP id " in data  # RFC 6531 §4.3
        d.wait_for(rf"mda delivery .*rcpt=<{USER}@virt\.test> .*result=Ok")
    finally:
        d.kill_group()
        sink.close()


def test_relayed_to_an_smtputf8_next_hop(workdir: Path) -> None:
    sink = ThreadedSink(SinkConfig(smtputf8=True, chunking=True))
    d = start(workdir, sink.port)
    try:
        replies = submit(d, "ünï@client.test", "dëst@remote.test")
        assert replies[-1][0] == 250, replies
        wait_for(lambda: len(sink.sink.messages) == 1)
        got = sink.sink.messages[0]
        assert got.mail_line.startswith("MAIL FROM:<ünï@client.test>")
        assert "SMTPUTF8" in got.mail_line.split()
        assert got.recipients == ["dëst@remote.test"]
        assert got.content.endswith("\n\nhéllo wörld\n".encode()) and got.chunks
        d.wait_for(r"mta delivery .*to=<dëst@remote\.test>.*result=\"?Ok")
    finally:
        d.kill_group()
        sink.close()


def test_next_hop_without_smtputf8_gives_a_bounce(workdir: Path) -> None:
    sink = ThreadedSink(SinkConfig(smtputf8=False))
    d = start(workdir, sink.port)
    try:
        # the sender is a local user so that the bounce lands in a Maildir
        replies = submit(d, "root@localhost", "dëst@remote.test")
        assert replies[-1][0] == 250, replies
        files = maildir_files(workdir / "mail" / "root", 1, timeout=30)
        dsn = email.message_from_bytes(files[0].read_bytes())
        assert dsn["Subject"] == "Delivery status notification: failed"
        text = files[0].read_bytes().decode("utf-8", "replace")
        assert "553 5.6.7" in text and "SMTPUTF8" in text
        assert "dëst@remote.test" in text
        assert sink.sink.messages == []  # never sent downgraded
        d.wait_for(r"mta delivery .*to=<dëst@remote\.test>.*553 5\.6\.7")
    finally:
        d.kill_group()
        sink.close()
