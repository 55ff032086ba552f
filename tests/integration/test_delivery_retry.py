"""Delivery outcomes through the real daemon: a tempfailing MDA is retried
(and forced with `schedule`), a permanent failure bounces to the sender as a
DSN (RFC 3464), and an envelope whose `queue ttl` runs out gives the
"delayed" notice COMPAT.md describes."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon
from tests.integration.queue_helpers import (
    maildir_files,
    read_mail,
    send,
    show_queue,
    start,
    wait_mails,
    wait_until,
)

ROOT = "root@localhost"
EX_TEMPFAIL = 75

# mda commands refuse to run as root (the daemon says so): the virtual table
# maps the test addresses to `nobody`.  Bounces go to root's Maildir.
CONFIG = """
%(ttl)s
table vt { "temp@localhost" = "nobody", "perm@localhost" = "nobody" }
listen on 127.0.0.1 port %(port)d
action "local" maildir "%(work)s/mail/%%{user.username}"
action "temp" mda "%(work)s/temp.sh %%{rcpt}" virtual <vt>
action "perm" mda "%(work)s/perm.sh" virtual <vt>
match from any for rcpt-to "temp@localhost" action "temp"
match from any for rcpt-to "perm@localhost" action "perm"
match from any for local action "local"
"""

TEMP_SH = """#!/bin/sh
# EX_TEMPFAIL until the test creates the flag, then keep the message.
if [ -e %(work)s/flag ]; then
    cat > %(work)s/drop/"$1".$$ && exit 0
fi
echo "mailbox locked, flag missing"
exit %(code)d
"""

PERM_SH = """#!/bin/sh
echo "no such mailbox here"
exit 1
"""


@dataclass(frozen=True)
class Setup:
    daemon: Daemon
    work: Path

    @property
    def drop(self) -> Path:
        return self.work / "drop"

    @property
    def root_mail(self) -> Path:
        return self.work / "mail" / "root"


def _start(work: Path, ttl: str = "") -> Setup:
    (work / "drop").mkdir()
    (work / "drop").chmod(0o777)  # the mda runs as nobody
    for name, text in (("temp.sh", TEMP_SH), ("perm.sh", PERM_SH)):
        script = work / name
        script.write_text(text % {"work": work, "code": EX_TEMPFAIL})
        script.chmod(0o755)
    conf = CONFIG % {"ttl": ttl, "port": free_port(), "work": work}
    return Setup(start(Daemon(work, conf)), work)


@pytest.fixture
def setup(workdir: Path) -> Iterator[Setup]:
    s = _start(workdir)
    yield s
    s.daemon.kill_group()


def test_tempfail_then_schedule_delivers(setup: Setup) -> None:
    d = setup.daemon
    msgid = send(d.port, ROOT, ["temp@localhost"], "Subject: retry me\n\nhello\n")
    line = wait_until("a first failed try", lambda: next(
        (q for q in show_queue(d) if q.msgid == msgid and q.retry >= 1), None), 10)
    assert line.retry == 1
    assert line.errorline == "451 4.3.0 mailbox locked, flag missing"
    assert line.lasttry >= line.ctime
    assert line.runstate == "pending"
    # the first retry is 10 s * retry^2 away (scheduler backoff): not now
    assert 1 <= line.nexttry <= 10, line
    assert list(setup.drop.iterdir()) == []
    d.wait_for(r"result=TempFail stat=451 4.3.0 mailbox locked, flag missing")

    (setup.work / "flag").touch()
    out = d.smtpctl("schedule", "all")
    assert (out.returncode, out.stdout) == (0, "1 envelope scheduled\n")
    # the queue empties once the mda has exited 0: its file is complete then
    wait_until("an empty queue", lambda: show_queue(d) == [] or None, 5)
    files = list(setup.drop.iterdir())
    assert [f.name.split(".")[0] for f in files] == ["temp@localhost"]
    assert "Subject: retry me" in files[0].read_text()
    assert maildir_files(setup.root_mail) == []  # no bounce for a tempfail


def _parts(report: EmailMessage) -> dict[str, EmailMessage]:
    out: dict[str, EmailMessage] = {}
    for part in report.iter_parts():
        assert isinstance(part, EmailMessage)
        out[part.get_content_type()] = part
    return out


def _status_fields(part: EmailMessage) -> list[dict[str, str]]:
    """message/delivery-status: the per-message block then one block per
    recipient (RFC 3464 §2.1); the email package gives each as a message."""
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    out = []
    for b in blocks:
        assert isinstance(b, EmailMessage)
        out.append({k: str(v) for k, v in b.items()})
    return out


def test_permfail_bounces_to_sender(setup: Setup) -> None:
    d = setup.daemon
    msgid = send(d.port, ROOT, ["perm@localhost"],
                 "Subject: doomed\nMessage-ID: <doomed.1@client.test>\n\nbody\n")
    files = wait_mails(setup.root_mail, 1, 10)
    time.sleep(0.3)
    assert len(maildir_files(setup.root_mail)) == 1  # one bounce, not more
    dsn = read_mail(files[0])
    assert dsn["Subject"] == "Delivery status notification: failed"
    assert "MAILER-DAEMON@" in str(dsn["From"])
    assert dsn["To"] == ROOT
    assert "Return-Path" not in dsn or dsn["Return-Path"] == "<>"
    # RFC 3464 §2: multipart/report; report-type=delivery-status
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = _parts(dsn)
    assert "no such mailbox here" in parts["text/plain"].get_content()
    per_msg, per_rcpt = _status_fields(parts["message/delivery-status"])
    assert per_msg["Reporting-MTA"].startswith("dns; ")
    # bounce.c: Final-Recipient is the envelope's dest (after virtual expansion)
    assert per_rcpt["Final-Recipient"] == "rfc822; nobody@localhost"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"].startswith("5.")
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.3.0 no such mailbox here"
    original = parts["text/rfc822-headers"]
    text = original.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"Message-ID: <doomed.1@client.test>" in text
    assert b"Subject: doomed" in text
    assert f"id {msgid}".encode() in text  # our Received header
    wait_until("an empty queue", lambda: show_queue(d) == [] or None, 5)
    d.wait_for(rf"bounce failed to=<{ROOT}>")


def test_expiry_sends_delayed_notice(workdir: Path) -> None:
    s = _start(workdir, ttl="queue ttl 3s")
    d = s.daemon
    try:
        msgid = send(d.port, ROOT, ["temp@localhost"], "Subject: too late\n\nx\n")
        line = wait_until("the first try", lambda: next(
            (q for q in show_queue(d) if q.msgid == msgid and q.retry >= 1), None), 5)
        assert line.expire == line.ctime + 3
        files = wait_mails(s.root_mail, 1, 12)
        d.wait_for(rf"{msgid}[0-9a-f]{{8}} envelope expired")
        notice = read_mail(files[0])
        assert notice["Subject"] == "Delivery status notification: delayed"
        parts = _parts(notice)
        _per_msg, per_rcpt = _status_fields(parts["message/delivery-status"])
        assert per_rcpt["Action"] == "delayed"
        assert per_rcpt["Status"] == "4.4.7"
        assert "Envelope expired" in per_rcpt["Diagnostic-Code"]
        text = parts["text/rfc822-headers"].get_payload(decode=True)
        assert isinstance(text, bytes) and b"Subject: too late" in text
        # the expired envelope is gone: no retry, no second notice
        wait_until("an empty queue", lambda: show_queue(d) == [] or None, 5)
        (s.work / "flag").touch()
        d.smtpctl("schedule", "all")
        time.sleep(0.5)
        assert list(s.drop.iterdir()) == []
        assert len(maildir_files(s.root_mail)) == 1
    finally:
        d.kill_group()


def test_partial_failure_bounces_only_the_failed_recipient(setup: Setup) -> None:
    d = setup.daemon
    send(d.port, ROOT, ["perm@localhost", ROOT], "Subject: half\n\nx\n")
    files = wait_mails(setup.root_mail, 2, 10)  # the message itself and the bounce
    wait_until("an empty queue", lambda: show_queue(d) == [] or None, 5)
    by_subject = {str(read_mail(f)["Subject"]): read_mail(f) for f in files}
    assert set(by_subject) == {"half", "Delivery status notification: failed"}
    dsn = by_subject["Delivery status notification: failed"]
    blocks = _status_fields(_parts(dsn)["message/delivery-status"])
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; nobody@localhost"]


def _send_raw(port: int, mail: str, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        assert s.docmd(f"MAIL FROM:{mail}")[0] == 250
        assert s.docmd(f"RCPT TO:{rcpt}")[0] == 250
        code, _ = s.data(b"Subject: no dsn\r\n\r\nx\r\n")
        assert code == 250


@pytest.mark.parametrize(("mail", "rcpt"), [
    ("<>", "<perm@localhost>"),
    (f"<{ROOT}>", "<perm@localhost> NOTIFY=NEVER"),
], ids=["null-sender", "notify-never"])
def test_no_dsn_when_none_is_allowed(setup: Setup, mail: str, rcpt: str) -> None:
    # RFC 5321 §4.5.5: never bounce to <>; RFC 3461 §4.1: NOTIFY=NEVER
    d = setup.daemon
    _send_raw(d.port, mail, rcpt)
    d.wait_for(r"result=PermFail stat=550 5.3.0 no such mailbox here", 10)
    wait_until("an empty queue", lambda: show_queue(d) == [] or None, 5)
    time.sleep(0.5)
    assert maildir_files(setup.root_mail) == []
    assert "bounce failed to=" not in d.log_text()
