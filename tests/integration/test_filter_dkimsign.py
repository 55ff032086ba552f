"""A real OpenSMTPD filter, unchanged: Debian's opensmtpd-filter-dkimsign
signs mail passing through the daemon, and dkimpy (an independent DKIM
implementation) verifies the signature on the delivered message (issue 13).

Skips when the package (apt-get install opensmtpd-filter-dkimsign; .ci/run
installs it) or dkimpy is missing."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import smtplib
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon, temp_workdir

DKIMSIGN = Path("/usr/libexec/opensmtpd/filter-dkimsign")
dkim = pytest.importorskip("dkim", reason="dkimpy is not installed (pip install dkimpy)")
pytestmark = pytest.mark.skipif(
    not DKIMSIGN.exists(),
    reason="opensmtpd-filter-dkimsign is not installed (apt-get install "
           "opensmtpd-filter-dkimsign)")

CONFIG = """
filter "dkim" proc-exec "%(dkimsign)s -d example.test -s sel -k %(key)s"%(ident)s
listen on 127.0.0.1 port %(port)d filter "dkim"
action "local" maildir "%(mail)s/%%{user.username}"
match from any for local action "local"
"""

MESSAGE = (b"From: Alice <alice@example.test>\r\n"
           b"To: root@localhost\r\n"
           b"Subject: signed by the real filter\r\n"
           b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <dkim-test-1@example.test>\r\n"
           b"\r\n"
           b"Hello,\r\n"
           b".a dot-stuffed line\r\n"
           b"\r\n"
           b"bye\r\n")


def test_dkimsign_signature_verifies_with_dkimpy() -> None:
    work = temp_workdir()
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_path = work / "dkim.key"
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        ident = ""
        try:
            user = pwd.getpwnam("_dkimsign")
        except KeyError:
            user = None
        if user is not None and os.geteuid() == 0:
            # as Debian's README.Debian sets it up: the key belongs to _dkimsign
            os.chown(key_path, user.pw_uid, user.pw_gid)
            ident = " user _dkimsign group _dkimsign"
        os.chmod(key_path, 0o600)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
        port = free_port()
        daemon = Daemon(work, CONFIG % {"dkimsign": DKIMSIGN, "key": key_path,
                                        "ident": ident, "port": port,
                                        "mail": work / "mail"})
        try:
            daemon.start()
            daemon.wait_for(r"filter dkim ready", 20)
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
                    client.ehlo("client.test")
                    client.sendmail("alice@example.test", ["root"], MESSAGE)
            except smtplib.SMTPException as exc:
                raise AssertionError(daemon.log_text()[-3000:]) from exc
            deadline = time.monotonic() + 10
            files: list[Path] = []
            while not files and time.monotonic() < deadline:
                files = list((work / "mail").glob("*/new/*"))
                time.sleep(0.05)
            assert files, daemon.log_text()[-2000:]
        finally:
            daemon.kill_group()
        stored = files[0].read_bytes()
        assert b"DKIM-Signature:" in stored and b"d=example.test" in stored
        signed = stored.replace(b"\n", b"\r\n")
        queried: list[bytes] = []

        def dns(name: bytes, timeout: int = 5) -> bytes:
            queried.append(name)
            return record if name == b"sel._domainkey.example.test." else b""

        assert dkim.verify(signed, dnsfunc=dns)
        assert queried
        # and the check can fail: a changed body breaks it
        assert not dkim.verify(signed.replace(b"bye", b"BYE"), dnsfunc=dns)
    finally:
        shutil.rmtree(work, ignore_errors=True)
