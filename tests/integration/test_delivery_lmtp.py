"""`action "x" lmtp "/socket"` against a small LMTP server (RFC 2033) run by
the test on a unix socket: the right RCPT, the message with Return-Path and
Delivered-To, and a 4xx reply per recipient that leaves the envelope queued."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon
from tests.integration.queue_helpers import send, show_queue, start, wait_until

ROOT = "root@localhost"


@dataclass
class Transaction:
    lhlo: str = ""
    mail: str = ""
    rcpts: list[str] = field(default_factory=list)
    data: bytes = b""


class LmtpServer:
    """One thread, one connection at a time: enough for these tests."""

    def __init__(self, path: Path, rcpt_reply: str = "250 2.1.5 Ok",
                 data_reply: str = "250 2.0.0 Saved") -> None:
        self.path = path
        self.rcpt_reply = rcpt_reply
        self.data_reply = data_reply
        self.done: list[Transaction] = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)  # the delivery child runs as the recipient's user
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def transactions(self) -> list[Transaction]:
        with self.lock:
            return list(self.done)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(10)
                self._session(conn.makefile("rb"), conn)

    def _session(self, f: BinaryIO, conn: socket.socket) -> None:
        def say(line: str) -> None:
            conn.sendall(line.encode() + b"\r\n")

        say("220 lmtp.test LMTP ready")
        t = Transaction()
        accepted = 0
        while line := f.readline():
            cmd = line.rstrip(b"\r\n").decode()
            verb = cmd.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb == "LHLO":
                t.lhlo = cmd[5:]
                say("250-lmtp.test")
                say("250 ENHANCEDSTATUSCODES")
            elif verb == "MAIL":
                t.mail = cmd
                say("250 2.1.0 Ok")
            elif verb == "RCPT":
                t.rcpts.append(cmd)
                say(self.rcpt_reply)
                accepted += self.rcpt_reply.startswith("2")
            elif verb == "DATA":
                say("354 go ahead")
                body = b""
                while (chunk := f.readline()) != b".\r\n":
                    if not chunk:
                        return
                    body += chunk
                t.data = body
                for _ in range(accepted):  # RFC 2033 §4.2: one reply per recipient
                    say(self.data_reply)
                with self.lock:
                    self.done.append(t)
                t, accepted = Transaction(), 0
            elif verb == "RSET":
                t, accepted = Transaction(), 0
                say("250 2.0.0 Ok")
            elif verb == "QUIT":
                say("221 2.0.0 Bye")
                return
            else:
                say("500 5.5.1 what?")


CONFIG = """
listen on 127.0.0.1 port %(port)d
action "l" lmtp "%(sock)s"
action "lr" lmtp "%(sock)s" rcpt-to
match from any for rcpt-to "root+full@localhost" action "lr"
match from any for local action "l"
"""


@dataclass(frozen=True)
class Setup:
    daemon: Daemon
    server: LmtpServer


def _setup(work: Path, **replies: str) -> Iterator[Setup]:
    server = LmtpServer(work / "lmtp.sock", **replies)
    d = start(Daemon(work, CONFIG % {"port": free_port(), "sock": work / "lmtp.sock"}))
    try:
        yield Setup(d, server)
    finally:
        d.kill_group()
        server.close()


@pytest.fixture
def lmtp(workdir: Path) -> Iterator[Setup]:
    yield from _setup(workdir)


@pytest.fixture
def lmtp_busy(workdir: Path) -> Iterator[Setup]:
    yield from _setup(workdir, data_reply="452 4.2.2 Mailbox full")


def test_lmtp_delivers_with_user_as_rcpt(lmtp: Setup) -> None:
    msgid = send(lmtp.daemon.port, "sender@client.test", [ROOT],
                 "Subject: via lmtp\n\n.leading dot\nbody\n")
    t = wait_until("an LMTP transaction", lmtp.server.transactions, 10)[0]
    # mail.lmtp: the recipient is the user name unless `rcpt-to` is given
    assert t.rcpts == ["RCPT TO:<root>"]
    assert t.mail == "MAIL FROM:<sender@client.test>"
    text = t.data.decode()
    assert text.startswith("Return-Path: <sender@client.test>\r\nDelivered-To: root@localhost\r\n")
    assert f"id {msgid}" in text
    assert "Subject: via lmtp\r\n" in text
    assert "\r\n..leading dot\r\nbody\r\n" in text  # dot-stuffed on the wire
    wait_until("an empty queue", lambda: show_queue(lmtp.daemon) == [] or None, 5)
    lmtp.daemon.wait_for(r"mda delivery .* result=Ok")


def test_lmtp_rcpt_to_gives_the_address(lmtp: Setup) -> None:
    send(lmtp.daemon.port, "sender@client.test", ["root+full@localhost"], "Subject: x\n\nx\n")
    t = wait_until("an LMTP transaction", lmtp.server.transactions, 10)[0]
    assert t.rcpts == ["RCPT TO:<root+full@localhost>"]


def test_lmtp_4xx_after_data_is_retried(lmtp_busy: Setup) -> None:
    d = lmtp_busy.daemon
    msgid = send(d.port, "sender@client.test", [ROOT], "Subject: x\n\nx\n")
    line = wait_until("a tempfail", lambda: next(
        (q for q in show_queue(d) if q.msgid == msgid and q.retry == 1), None), 10)
    assert line.errorline == "452 4.2.2 Mailbox full"
    assert len(lmtp_busy.server.transactions()) == 1
    lmtp_busy.server.data_reply = "250 2.0.0 Saved"
    out = d.smtpctl("schedule", "all")
    assert out.stdout == "1 envelope scheduled\n"
    wait_until("an empty queue", lambda: show_queue(d) == [] or None, 5)
    assert len(lmtp_busy.server.transactions()) == 2
