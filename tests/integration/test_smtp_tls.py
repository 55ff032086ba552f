"""TLS and AUTH through the real daemon: STARTTLS verified against a trustme CA,
smtps, tls-require, the STARTTLS injection (RFC 3207 §4.2, CVE-2011-0411),
AUTH PLAIN/LOGIN against a bcrypt credentials table (RFC 4954), and the EHLO
keywords of a plain listener (COMPAT.md §2)."""

from __future__ import annotations

import base64
import re
import shutil
import smtplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import bcrypt
import pytest
import trustme

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon, temp_workdir
from tests.integration.smtp_helpers import (
    ehlo_keywords,
    message_dir,
    pause_mda,
    raw_connect,
    read_reply,
    wait_envelopes,
)

PASSWORD = "correct horse"


@dataclass(frozen=True)
class TlsWorld:
    daemon: Daemon
    ca: trustme.CA
    plain: int
    starttls: int
    require: int
    smtps: int
    auth: int  # STARTTLS + auth-optional <creds>
    auth_required: int  # STARTTLS + auth <creds>

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


CONFIG = """
pki localhost cert "%(cert)s"
pki localhost key "%(key)s"
table creds { "alice" = "%(hash)s" }
listen on 127.0.0.1 port %(plain)d
listen on 127.0.0.1 port %(starttls)d tls pki localhost
listen on 127.0.0.1 port %(require)d tls-require pki localhost
listen on 127.0.0.1 port %(smtps)d smtps pki localhost
listen on 127.0.0.1 port %(auth)d tls pki localhost auth-optional <creds>
listen on 127.0.0.1 port %(auth_required)d tls pki localhost auth <creds>
action "local" maildir "%(mail)s/%%{user.username}"
action "out" relay
match from any for local action "local"
match from auth for any action "out"
"""


@pytest.fixture(scope="module")
def world() -> Iterator[TlsWorld]:
    work = temp_workdir()
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = work / "cert.pem", work / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    ports = {name: free_port() for name in ("plain", "starttls", "require", "smtps", "auth",
                                      "auth_required")}
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    daemon = Daemon(work, CONFIG % {"cert": cert_path, "key": key_path, "hash": hashed,
                                    "mail": work / "mail", **ports}, args=("-P", "mda"))
    try:
        daemon.start()
        pause_mda(daemon)
        yield TlsWorld(daemon, ca, **ports)
    finally:
        daemon.kill_group()
        shutil.rmtree(work, ignore_errors=True)


# -- plain listener -------------------------------------------------------------

def test_greeting_and_ehlo_keywords_exact(world: TlsWorld) -> None:
    # smtplib does not keep the greeting: read it from a raw socket
    sock = raw_connect(world.plain)
    try:
        code, lines = read_reply(sock)
        assert (code, lines) == (220, ["localhost ESMTP pysmtpd"])
        sock.sendall(b"EHLO client.test\r\n")
        code, lines = read_reply(sock)
        assert code == 250
        assert lines == ["localhost Hello client.test [127.0.0.1], pleased to meet you",
                         "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 36700160", "DSN",
                         "PIPELINING", "SMTPUTF8", "CHUNKING", "HELP"]
    finally:
        sock.close()


def test_starttls_offered_only_with_pki_and_auth_only_after_tls(world: TlsWorld) -> None:
    assert "STARTTLS" in ehlo_keywords(world.starttls)
    assert "AUTH" not in ehlo_keywords(world.starttls)
    before = ehlo_keywords(world.auth)
    assert "STARTTLS" in before and "AUTH" not in before
    with smtplib.SMTP("127.0.0.1", world.auth, timeout=10) as s:
        s.starttls(context=world.client_context())
        s.ehlo("client.test")
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert "starttls" not in s.esmtp_features
        # AUTH before TLS on the same listener: refused as upstream
    sock = raw_connect(world.auth)
    try:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\n")
        read_reply(sock)
        sock.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode())
                     + b"\r\n")
        assert read_reply(sock) == (503, ["5.5.1 Invalid command: Command not supported"])
    finally:
        sock.close()


# -- TLS ---------------------------------------------------------------------

def test_starttls_verified_and_mail_accepted(world: TlsWorld) -> None:
    with smtplib.SMTP("127.0.0.1", world.starttls, timeout=10) as s:
        code, text = s.starttls(context=world.client_context())
        assert (code, text) == (220, b"2.0.0 Ready to start TLS")
        sock = s.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        s.ehlo("client.test")
        s.mail("tls@client.test")
        s.rcpt("root@localhost")
        code, text = s.data(b"Subject: tls\r\n\r\nover TLS\r\n")
        assert code == 250
    msgid = text.split()[1].decode()
    envs = wait_envelopes(world.daemon, msgid)
    assert [e["rcpt"] for e in envs] == ["root@localhost"]


def test_smtps_listener_speaks_tls_from_the_first_byte(world: TlsWorld) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", world.smtps, timeout=10,
                          context=world.client_context()) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert "starttls" not in s.esmtp_features
        assert s.noop() == (250, b"2.0.0 Ok")


def test_tls_require_refuses_mail_before_starttls(world: TlsWorld) -> None:
    with smtplib.SMTP("127.0.0.1", world.require, timeout=10) as s:
        s.ehlo("client.test")
        assert s.mail("a@client.test") == (
            530, b"5.5.1 Invalid command: Must issue a STARTTLS command first")
        s.starttls(context=world.client_context())
        s.ehlo("client.test")
        assert s.mail("a@client.test") == (250, b"2.0.0 Ok")


def test_starttls_injection_is_discarded(world: TlsWorld) -> None:
    """Plaintext pipelined after STARTTLS must not be executed after the
    handshake (RFC 3207 §4.2)."""
    sock = raw_connect(world.starttls)
    try:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\n")
        read_reply(sock)
        sock.sendall(b"STARTTLS\r\nNOOP\r\n")
        assert read_reply(sock) == (220, ["2.0.0 Ready to start TLS"])
        tls = world.client_context().wrap_socket(sock, server_hostname="localhost")
        sock = tls
        tls.sendall(b"EHLO after.test\r\n")
        code, lines = read_reply(tls)
        # an executed NOOP would answer "250 2.0.0 Ok" first
        assert code == 250 and lines[0].startswith("localhost Hello after.test"), lines
        tls.sendall(b"QUIT\r\n")
        assert read_reply(tls) == (221, ["2.0.0 Bye"])
    finally:
        sock.close()


# -- AUTH --------------------------------------------------------------------

def test_auth_plain_success_and_failure(world: TlsWorld) -> None:
    with smtplib.SMTP("127.0.0.1", world.auth, timeout=10) as s:
        s.starttls(context=world.client_context())
        s.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            s.login("alice", "wrong password", initial_response_ok=True)
        assert (info.value.smtp_code, info.value.smtp_error) == (
            535, b"5.7.8 Authentication failed")
        s.auth("PLAIN", lambda challenge=None: f"\0alice\0{PASSWORD}")
    log = world.daemon
    log.wait_for(r"smtp authentication user=alice result=permfail")
    log.wait_for(r"smtp authentication user=alice result=ok")


def test_auth_login_success(world: TlsWorld) -> None:
    sock = raw_connect(world.auth)
    try:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\nSTARTTLS\r\n")
        read_reply(sock)
        assert read_reply(sock)[0] == 220
        tls = world.client_context().wrap_socket(sock, server_hostname="localhost")
        sock = tls
        tls.sendall(b"EHLO client.test\r\n")
        read_reply(tls)
        tls.sendall(b"AUTH LOGIN\r\n")
        assert read_reply(tls) == (334, ["VXNlcm5hbWU6"])
        tls.sendall(base64.b64encode(b"alice") + b"\r\n")
        assert read_reply(tls) == (334, ["UGFzc3dvcmQ6"])
        tls.sendall(base64.b64encode(PASSWORD.encode()) + b"\r\n")
        assert read_reply(tls) == (235, ["2.7.0 Authentication succeeded"])
        tls.sendall(b"AUTH LOGIN\r\n")
        assert read_reply(tls) == (503, ["5.5.1 Invalid command: Already authenticated"])
    finally:
        sock.close()


def test_auth_listener_refuses_mail_before_auth(world: TlsWorld) -> None:
    with smtplib.SMTP("127.0.0.1", world.auth_required, timeout=10) as s:
        s.starttls(context=world.client_context())
        s.ehlo("client.test")
        assert s.mail("alice@client.test") == (
            530, b"5.5.1 Invalid command: Must issue an AUTH command first")
        s.login("alice", PASSWORD)
        assert s.mail("alice@client.test") == (250, b"2.0.0 Ok")


def test_relay_only_when_authenticated(world: TlsWorld) -> None:
    with smtplib.SMTP("127.0.0.1", world.auth, timeout=10) as s:
        s.starttls(context=world.client_context())
        s.ehlo("client.test")
        s.mail("alice@client.test")
        assert s.rcpt("bob@remote.example") == (
            550, b"5.7.1 Delivery not authorized, message refused: relay denied")
        s.rset()
        s.login("alice", PASSWORD)
        s.mail("alice@client.test")
        assert s.rcpt("bob@remote.example") == (
            250, b"2.1.5 Destination address valid: Recipient ok")
        code, text = s.data(b"Subject: out\r\n\r\nrelayed\r\n")
        assert code == 250
    msgid = text.split()[1].decode()
    envs = wait_envelopes(world.daemon, msgid)
    assert len(envs) == 1
    assert envs[0]["type"] == "mta" and envs[0]["dispatcher"] == "out"
    assert envs[0]["rcpt"] == "bob@remote.example"
    # RFC 5321 §4.4 trace header, upstream's layout: TLS details, ESMTPSA
    stored = (message_dir(world.daemon.spool, msgid) / "message").read_text()
    lines = stored.split("\n")
    assert lines[0].startswith("Received: from client.test (")
    assert lines[0].endswith(" [127.0.0.1])")
    assert re.fullmatch(r"\t\(TLSv1\.[23]:[A-Z0-9_-]+:\d+:NO\)", lines[1]), lines[1]
    assert lines[2] == f"\tby localhost (pysmtpd) with ESMTPSA id {msgid}"
    assert lines[3] == "\tfor <bob@remote.example>;"


def test_failed_auth_logged_with_secret_masked(world: TlsWorld) -> None:
    secret = base64.b64encode(b"\0alice\0hunter2-not-it").decode()
    sock = raw_connect(world.auth)
    try:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\nSTARTTLS\r\n")
        read_reply(sock)
        read_reply(sock)
        tls = world.client_context().wrap_socket(sock, server_hostname="localhost")
        sock = tls
        tls.sendall(b"EHLO client.test\r\n")
        read_reply(tls)
        tls.sendall(f"AUTH PLAIN {secret}\r\n".encode())
        assert read_reply(tls) == (535, ["5.7.8 Authentication failed"])
    finally:
        sock.close()
    world.daemon.wait_for(
        r'smtp failed-command command="AUTH PLAIN \*+" result="535 5\.7\.8 Authentication failed"')
    assert secret not in world.daemon.log_text()
    assert "hunter2" not in world.daemon.log_text()
