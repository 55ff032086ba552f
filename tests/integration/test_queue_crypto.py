"""Queue compression and encryption through the real daemon (issue 8): the
spool holds gzip files an administrator reads with `gzip -dc`, or encrypted
files with no plaintext at all; a wrong key or a tampered file is reported and
set aside, never a crash."""

from __future__ import annotations

import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon

KEY = "correct horse battery staple 0123"
SECRET = b"the-secret-word-in-the-body"


def config(workdir: Path, queue: str) -> str:
    return (f"{queue}\n"
            f"listen on 127.0.0.1 port {free_port()}\n"
            f'action "local" maildir "{workdir}/mail/%{{user.username}}"\n'
            'match from any for local action "local"\n')


def send(d: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.sendmail("a@example.org", ["root@localhost"],
                   b"Subject: queued\r\n\r\n" + SECRET + b"\r\n")


def spool_files(d: Daemon) -> list[Path]:
    return sorted(p for p in (d.spool / "queue").rglob("*")
                  if p.is_file() and p.name != "keycheck")


def delivered(d: Daemon) -> list[Path]:
    return sorted((d.workdir / "mail" / "root" / "new").glob("*"))


def test_compressed_spool_reads_with_gzip(workdir: Path) -> None:
    d = Daemon(workdir, config(workdir, "queue compression"), args=("-P", "mda")).start()
    try:
        send(d)
        files = spool_files(d)
        assert len(files) == 2  # the message and one envelope
        for f in files:
            assert f.read_bytes()[:2] == b"\x1f\x8b"
            plain = subprocess.run(["gzip", "-dc", str(f)], capture_output=True, check=True)
            assert plain.stdout
        message = next(f for f in files if f.name == "message")
        assert SECRET in subprocess.run(["gzip", "-dc", str(message)],
                                        capture_output=True).stdout
        envelope = next(f for f in files if f.name != "message")
        text = subprocess.run(["gzip", "-dc", str(envelope)], capture_output=True).stdout
        assert text.startswith(b"version: 1\n") and b"rcpt: root@localhost" in text
        assert d.smtpctl("resume", "mda").returncode == 0
        d.wait_for(r"mda delivery .*result=Ok")
        assert SECRET in delivered(d)[0].read_bytes()
    finally:
        d.kill_group()


def test_encrypted_spool_has_no_plaintext(workdir: Path) -> None:
    conf = config(workdir, f'queue compression\nqueue encryption "{KEY}"')
    d = Daemon(workdir, conf, args=("-P", "mda")).start()
    try:
        send(d)
        for f in spool_files(d):
            data = f.read_bytes()
            assert data[:1] == b"\x01"
            assert SECRET not in data and b"root@localhost" not in data
        # smtpctl still shows it: the queue process holds the key
        out = d.smtpctl("show", "queue")
        assert "|root@localhost|" in out.stdout
        assert d.smtpctl("resume", "mda").returncode == 0
        d.wait_for(r"mda delivery .*result=Ok")
        assert SECRET in delivered(d)[0].read_bytes()
    finally:
        d.kill_group()


def test_wrong_key_is_refused_clearly(workdir: Path) -> None:
    d = Daemon(workdir, config(workdir, f'queue encryption "{KEY}"'), args=("-P", "mda"))
    d.start()
    send(d)
    d.stop()
    d.conf.write_text(d.conf.read_text().replace(KEY, "not the key at all, sorry 0000"))
    d.start(wait_ready=False)
    try:
        assert d.proc is not None
        status = d.proc.wait(timeout=20)
        assert status != 0
        log = d.log_text()
        assert "does not match" in log or "key" in log.lower()
        assert "Traceback" not in log
    finally:
        d.kill_group()


@pytest.mark.parametrize("target", ["message", "envelope"])
def test_tampered_file_is_set_aside(workdir: Path, target: str) -> None:
    d = Daemon(workdir, config(workdir, f'queue encryption "{KEY}"'), args=("-P", "mda"))
    d.start()
    send(d)
    send(d)
    d.stop()
    victim = next(f for f in spool_files(d) if (f.name == "message") == (target == "message"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    d.start()
    try:
        assert d.smtpctl("resume", "mda").returncode == 0
        d.wait_for(r"mda delivery .*result=Ok", 20)       # the other message
        d.wait_for(r"moved to corrupt", 20)                # the tampered one
        assert any((d.spool / "corrupt").rglob("*"))
        assert d.proc is not None and d.proc.poll() is None
        assert "Traceback" not in d.log_text()
    finally:
        d.kill_group()


def test_key_rotation_with_old_key(workdir: Path) -> None:
    """`queue old-key`: mail queued under the old key is still delivered after
    the key changes, and new mail is written with the new one."""
    d = Daemon(workdir, config(workdir, f'queue encryption "{KEY}"'), args=("-P", "mda"))
    d.start()
    send(d)
    d.stop()
    new_key = "a brand new key for this spool 42"
    d.conf.write_text(d.conf.read_text().replace(
        f'queue encryption "{KEY}"', f'queue encryption "{new_key}"\nqueue old-key "{KEY}"'))
    d.start()
    try:
        send(d)
        assert d.smtpctl("resume", "mda").returncode == 0
        d.wait_for(r"mda delivery .*result=Ok", 20)
        end = time.monotonic() + 20
        while len(delivered(d)) < 2 and time.monotonic() < end:
            time.sleep(0.1)
        assert len(delivered(d)) == 2
        assert all(SECRET in f.read_bytes() for f in delivered(d))
        assert "Traceback" not in d.log_text()
    finally:
        d.kill_group()
