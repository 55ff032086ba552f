"""Helpers for the queue, delivery and crash integration tests: sending with
smtplib, reading Maildirs and `show queue` lines, waiting with a deadline."""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from tests.integration.daemon import Daemon

# smtpctl.c show_queue_envelope(): the 14 '|'-separated fields, in order.
QUEUE_FIELDS = ("evpid", "family", "type", "flags", "sender", "rcpt", "dest", "ctime",
                "expire", "lasttry", "retry", "runstate", "nexttry", "errorline")


@dataclass(frozen=True)
class QueueLine:
    evpid: str
    family: str
    type: str
    flags: str
    sender: str
    rcpt: str
    dest: str
    ctime: int
    expire: int
    lasttry: int
    retry: int
    runstate: str
    nexttry: int
    errorline: str

    @property
    def msgid(self) -> str:
        return self.evpid[:8]


def parse_queue_line(line: str) -> QueueLine:
    # The error line is last and may itself contain '|': split at most 13 times.
    f = line.split("|", len(QUEUE_FIELDS) - 1)
    assert len(f) == len(QUEUE_FIELDS), line
    return QueueLine(f[0], f[1], f[2], f[3], f[4], f[5], f[6], int(f[7]), int(f[8]),
                     int(f[9]), int(f[10]), f[11], int(f[12]), f[13])


def show_queue(d: Daemon) -> list[QueueLine]:
    out = d.smtpctl("show", "queue")
    assert out.returncode == 0, out.stderr
    return [parse_queue_line(x) for x in out.stdout.splitlines() if x]


# Logged once the queue has loaded the spool into the scheduler: tests that
# count envelopes or deliveries start from a settled daemon.
QUEUE_LIVE = "envelopes loaded from the spool"


def start(d: Daemon) -> Daemon:
    d.start()
    d.wait_for(QUEUE_LIVE, 10)
    return d


def wait_until[T](what: str, probe: Callable[[], T | None], timeout: float = 10.0,
               step: float = 0.05) -> T:
    """Poll `probe` until it returns something truthy; fail with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def send(port: int, sender: str, rcpts: list[str], body: str) -> str:
    """One message; returns the msgid from the 250 reply
    ("250 2.0.0 <msgid> Message accepted for delivery")."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        s.mail(sender)
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, (code, text)
        code, text = s.data(body.replace("\r\n", "\n").replace("\n", "\r\n").encode())
        assert code == 250, (code, text)
    return text.decode().split()[1]


def maildir_files(maildir: Path) -> list[Path]:
    new = maildir / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def read_mail(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def wait_mails(maildir: Path, count: int, timeout: float = 10.0) -> list[Path]:
    def probe() -> list[Path] | None:
        files = maildir_files(maildir)
        return files if len(files) >= count else None
    return wait_until(f"{count} mails in {maildir}", probe, timeout)
