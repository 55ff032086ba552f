"""sendmail(8), mailq and friends driven like a user would, against the real
daemon: the message goes in on stdin, comes out of root's Maildir."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon, temp_workdir
from tests.integration.queue_helpers import (
    maildir_files,
    parse_queue_line,
    read_mail,
    start,
    wait_until,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="delivers to root's Maildir")


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    """One daemon for the online tests; each test uses its own root+TAG."""
    workdir = temp_workdir()
    (workdir / "aliases").write_text("postmaster: root\n")
    config = (f"table aliases file:{workdir}/aliases\n"
              + basic_config(workdir).replace('%{user.username}"',
                                              '%{user.username}" alias <aliases>'))
    d = start(Daemon(workdir, config))
    yield d
    d.kill_group()
    shutil.rmtree(workdir, ignore_errors=True)


def env_for(d: Daemon) -> dict[str, str]:
    return {**d.env, "SMTPCTL_CONFIG": str(d.conf)}


def run(d: Daemon, module: str, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", module, *args], input=data,
                          capture_output=True, env=env_for(d), timeout=30)


def sendmail(d: Daemon, *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return run(d, "smtpctl.sendmail", *args, data=data)


def mails_for(d: Daemon, tag: str, count: int = 1) -> list[EmailMessage]:
    def probe() -> list[EmailMessage] | None:
        got = [m for m in map(read_mail, maildir_files(d.maildir / "root"))
               if m["Delivered-To"] == f"root+{tag}@localhost"]
        return got if len(got) >= count else None
    return wait_until(f"mail for root+{tag}", probe)


def body(m: EmailMessage) -> str:
    payload = m.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def test_t_collects_to_cc_bcc_and_removes_bcc(shared: Daemon) -> None:
    msg = (b"From: Alice <alice@example.test>\r\n"
           b"To: root+ta@localhost\r\n"
           b"Cc: Someone (a comment) <root+tc@localhost>\r\n"
           b"Bcc: root+tb@localhost,\r\n"
           b"  \"Hidden, Person\" <root+tb2@localhost>\r\n"
           b"Subject: t flag\r\n"
           b"\r\n"
           b"line\r\n.\r\n..two\r\n.dot\r\nlast\r\n")
    out = sendmail(shared, "-t", "-i", data=msg)
    assert out.returncode == 0, out.stderr
    for tag in ("ta", "tc", "tb", "tb2"):
        (m,) = mails_for(shared, tag)
        assert m["Bcc"] is None, tag
        # upstream: without -f the From: header gives the envelope sender
        assert m["Return-Path"] == "<alice@example.test>"
        assert m["Subject"] == "t flag"
        # a lone dot does not end the input; dots survive stuffing
        assert body(m) == "line\n.\n..two\n.dot\nlast\n"
    raw = maildir_files(shared.maildir / "root")[0].read_bytes()
    assert b"Bcc" not in raw and b"\r" not in raw


def test_f_and_F_and_added_headers(shared: Daemon) -> None:
    out = sendmail(shared, "-f", "<sender@example.test>", "-F", "Full Name", "root+ff@localhost",
                   data=b"Subject: no from\n\nhello\n")
    assert out.returncode == 0, out.stderr
    (m,) = mails_for(shared, "ff")
    assert m["Return-Path"] == "<sender@example.test>"
    assert m["From"] == "Full Name <sender@example.test>"
    assert m["Date"] is not None and m["Message-ID"] is not None
    assert body(m) == "hello\n"


def test_unqualified_recipients_and_comma_lists(shared: Daemon) -> None:
    out = sendmail(shared, "-f", "x@example.test", "root+c1@localhost,root+c2@localhost",
                   data=b"Subject: two\n\nx\n")
    assert out.returncode == 0, out.stderr
    mails_for(shared, "c1")
    mails_for(shared, "c2")


def test_compat_flags_are_ignored(shared: Daemon) -> None:
    out = sendmail(shared, "-oi", "-oem", "-odb", "-B8BITMIME", "-m", "-x", "-e", "x",
                   "-L", "tag", "-A", "c", "-Eopt", "root+cf@localhost", "-f", "c@example.test",
                   data=b"Subject: compat\n\nbody\n")
    assert out.returncode == 0, out.stderr
    (m,) = mails_for(shared, "cf")
    assert m["Return-Path"] == "<c@example.test>"


def test_usage_errors_and_refusals(shared: Daemon) -> None:
    bad = sendmail(shared, "-Z", "root@localhost", data=b"x\n")
    assert bad.returncode == 1 and b"usage: sendmail" in bad.stderr
    assert sendmail(shared, "-q", data=b"").returncode == os.EX_SOFTWARE
    none = sendmail(shared, "-t", data=b"Subject: nobody\n\nx\n")
    assert none.returncode == os.EX_SOFTWARE and b"no recipients" in none.stderr


def test_verbose_shows_both_sides_and_dsn_options(shared: Daemon) -> None:
    out = sendmail(shared, "-v", "-f", "v@example.test", "-N", "never", "-R", "hdrs",
                   "-V", "env42", "root+vb@localhost", data=b"Subject: v\n\nx\n")
    assert out.returncode == 0, out.stderr
    err = out.stderr.decode().splitlines()
    assert err[0].startswith("<<< 220 ")
    assert ">>> MAIL FROM:<v@example.test> RET=hdrs ENVID=env42" in err
    assert ">>> RCPT TO:<root+vb@localhost> NOTIFY=never" in err
    assert any(line.startswith("<<< 354 ") for line in err)
    assert any(line.startswith("<<< 250 2.0.0 ") and "accepted" in line for line in err)
    assert err[-1].startswith("<<< 221 ")
    assert out.stdout == b""
    mails_for(shared, "vb")


def test_bs_speaks_smtp_on_stdio(shared: Daemon) -> None:
    session = (b"EHLO client\r\nMAIL FROM:<bs@example.test>\r\nRCPT TO:<root+bs@localhost>\r\n"
               b"DATA\r\nSubject: bs\r\n\r\nvia -bs\r\n.\r\nQUIT\r\n")
    out = sendmail(shared, "-bs", data=session)
    assert out.returncode == 0, out.stderr
    replies = out.stdout.decode().splitlines()
    assert replies[0].startswith("220 ") and replies[-1].startswith("221 ")
    (m,) = mails_for(shared, "bs")
    assert body(m) == "via -bs\n"


def test_mailq_and_bp_list_the_queue(shared: Daemon) -> None:
    assert shared.smtpctl("pause", "mda").returncode == 0
    try:
        out = sendmail(shared, "-f", "q@example.test", "root+mq@localhost",
                       data=b"Subject: q\n\nx\n")
        assert out.returncode == 0, out.stderr
        for listing in (run(shared, "smtpctl.mailq"), sendmail(shared, "-bp")):
            assert listing.returncode == 0, listing.stderr
            lines = [parse_queue_line(x) for x in listing.stdout.decode().splitlines()]
            (q,) = [x for x in lines if x.rcpt == "root+mq@localhost"]
            assert (q.family, q.type, q.sender) == ("local", "mda", "q@example.test")
            assert len(q.evpid) == 16
    finally:
        assert shared.smtpctl("resume", "mda").returncode == 0
    mails_for(shared, "mq")


def test_offline_file_enqueued_once_at_next_start(workdir: Path) -> None:
    d = Daemon(workdir, basic_config(workdir))
    start(d)
    d.stop()
    msg = b"To: root+off@localhost\nBcc: root+offbcc@localhost\nSubject: offline\n\nkept\n"
    out = sendmail(d, "-t", data=msg)
    assert out.returncode == os.EX_TEMPFAIL, out.stderr  # upstream: queued offline
    offline = d.spool / "offline"
    (saved,) = list(offline.iterdir())
    st = saved.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (os.getuid(), 0o600)
    first, rest = saved.read_bytes().split(b"\n", 1)
    assert first == b"-t" and b"Date: " in rest and b"kept" in rest
    (offline / "broken").write_bytes(b"no argument line")
    # a file of another user is submitted as that user (getpwuid, setuid)
    nobody = pwd.getpwnam("nobody")
    theirs = offline / "1.nobody"
    theirs.write_bytes(b"root+nb@localhost\nSubject: from nobody\n\nhi\n")
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    stranger = offline / "2.stranger"
    stranger.write_bytes(b"root+st@localhost\nSubject: x\n\nx\n")
    os.chown(stranger, 54321, 54321)
    try:
        start(d)
        (m,) = mails_for(d, "off")
        assert m["Subject"] == "offline" and m["Bcc"] is None and body(m) == "kept\n"
        mails_for(d, "offbcc")  # Bcc recipients survive the offline detour
        wait_until("offline/ emptied", lambda: not list(offline.iterdir()))
        (nb,) = mails_for(d, "nb")
        assert nb["Return-Path"] == "<nobody@localhost>"
        assert nb["From"] == "nobody <nobody@localhost>"
        assert {p.name for p in (d.spool / "offline-failed").iterdir()} == {
            "broken", "2.stranger"}
        d.wait_for("offline message broken: no argument line")
        d.wait_for("offline message 2.stranger: getpwuid for uid 54321 failed")
        d.stop()
        start(d)  # nothing is submitted twice
        d.wait_for("envelopes loaded")
        assert len(maildir_files(d.maildir / "root")) == 3
    finally:
        d.kill_group()


def test_newaliases_checks_and_reloads_the_aliases_table(shared: Daemon) -> None:
    aliases = shared.workdir / "aliases"
    aliases.write_text("postmaster: root\nnewalias: root\n")
    out = run(shared, "smtpctl.makemap", data=b"")  # no file: usage
    assert out.returncode == 1 and b"usage: makemap" in out.stderr
    out = run(shared, "smtpctl.sendmail", "-bi")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == f"{aliases}: 2 aliases\n"
    assert b"not running" not in out.stderr
    sent = sendmail(shared, "-f", "al@example.test", "newalias@localhost",
                    data=b"Subject: alias\n\nx\n")
    assert sent.returncode == 0, sent.stderr
    def probe() -> list[EmailMessage] | None:
        got = [m for m in map(read_mail, maildir_files(shared.maildir / "root"))
               if m["Subject"] == "alias"]
        return got or None
    # the new alias exists: the table was reloaded (upstream's Delivered-To
    # is the original recipient)
    got = wait_until("mail through the new alias", probe)
    assert {m["Delivered-To"] for m in got} == {"newalias@localhost"}
    aliases.write_text("postmaster root\nbroken:\n")
    bad = run(shared, "smtpctl.makemap", "-t", "aliases", str(aliases))
    assert bad.returncode == 1 and b"invalid map entry" in bad.stderr


def test_mailq_reads_the_spool_when_the_daemon_is_down(workdir: Path) -> None:
    d = Daemon(workdir, basic_config(workdir), args=("-P", "mda"))
    try:
        start(d)
        out = sendmail(d, "-f", "down@example.test", "root+down@localhost",
                       data=b"Subject: down\n\nx\n")
        assert out.returncode == 0, out.stderr
        d.stop()
        listing = run(d, "smtpctl.mailq")
        assert listing.returncode == 0, listing.stderr
        (line,) = listing.stdout.decode().splitlines()
        fields = line.split("|")
        # smtpctl.c getflag(): a local submission is authenticated, "auth"
        assert fields[1:6] == ["local", "mda", "auth", "down@example.test", "root+down@localhost"]
        assert fields[11:] == ["offline", "", ""]
    finally:
        d.kill_group()


@pytest.mark.skipif(shutil.which("s-nail") is None,
                    reason="s-nail (Debian package s-nail) is not installed; .ci/run installs it")
def test_a_real_mail_user_agent_through_sendmail(shared: Daemon) -> None:
    """A real MUA (s-nail, a mailx) hands a message to our sendmail the way
    other software calls /usr/sbin/sendmail."""
    ours = Path(sys.executable).parent / "sendmail"
    out = subprocess.run(
        ["s-nail", "-:/", "-S", f"mta={ours}", "-S", "sendwait", "-s", "from a real mua",
         "root+mua@localhost"],
        input=b"written with s-nail\n", capture_output=True, env=env_for(shared), timeout=60)
    assert out.returncode == 0, out.stderr
    (m,) = mails_for(shared, "mua")
    assert m["Subject"] == "from a real mua"
    assert "written with s-nail" in body(m)
