"""Outbound TLS policy through the real daemon (issue 15 item 3): a
``tls-policy <table>`` picks MTA-STS or DANE per destination domain; a stub
DNS server (setting AD), a local HTTPS policy server and a STARTTLS sink,
all with trustme certificates."""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon
from tests.integration.test_relay import ThreadedSink, wait_for
from tests.mta.dnsstub import StubDns
from tests.mta.policyserver import PolicyServer
from tests.mta.sink import SinkConfig

POLICY = "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 3600\n"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def policy_server(ca: trustme.CA) -> Iterator[PolicyServer]:
    s = PolicyServer(ca, ["mta-sts.sts.test", "mta-sts.bad.test"])
    s.serve(POLICY)
    yield s
    s.close()


def spki_sha256(leaf: trustme.LeafCert) -> str:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def test_mta_sts_and_dane_per_domain(workdir: Path, ca: trustme.CA,
                                     policy_server: PolicyServer) -> None:
    leaf = ca.issue_cert("mx.sts.test", "mx.dane.test", "mx.bad.test")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    sink = ThreadedSink(SinkConfig(tls=ctx))
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca_file.chmod(0o644)
    a = ["127.0.0.1"]
    dns = StubDns({
        ("sts.test.", "MX"): ["10 mx.sts.test."], ("mx.sts.test.", "A"): a,
        ("_mta-sts.sts.test.", "TXT"): ['"v=STSv1; id=1;"'], ("mta-sts.sts.test.", "A"): a,
        # bad.test publishes a policy that does not name its MX: kept queued
        ("bad.test.", "MX"): ["10 mx.bad.test."], ("mx.bad.test.", "A"): a,
        ("_mta-sts.bad.test.", "TXT"): ['"v=STSv1; id=1;"'], ("mta-sts.bad.test.", "A"): a,
        ("dane.test.", "MX"): ["10 mx.dane.test."], ("mx.dane.test.", "A"): a,
        (f"_{sink.port}._tcp.mx.dane.test.", "TLSA"): [f"3 1 1 {spki_sha256(leaf)}"],
        # wrong.test: a TLSA record the sink's certificate does not match
        ("wrong.test.", "MX"): ["10 mx.wrong.test."], ("mx.wrong.test.", "A"): a,
        (f"_{sink.port}._tcp.mx.wrong.test.", "TLSA"): ["3 1 1 " + "ab" * 32],
    }, secure=True)
    config = (f"listen on 127.0.0.1 port {free_port()}\n"
              'table pol { "sts.test" = "mta-sts", "bad.test" = "mta-sts", '
              '"dane.test" = "dane", "wrong.test" = "dane" }\n'
              f'action "local" maildir "{workdir}/mail/%{{user.username}}"\n'
              'action "out" relay tls-policy <pol>\n'
              'match from any for local action "local"\n'
              'match from local for any action "out"\n')
    d = Daemon(workdir, config, env={
        "PYSMTPD_RESOLVER": dns.spec, "PYSMTPD_MX_PORT": str(sink.port),
        "PYSMTPD_MTASTS_PORT": str(policy_server.port), "PYSMTPD_MTASTS_CA": str(ca_file)})
    d.start()
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            for rcpt in ("a@sts.test", "b@dane.test", "c@bad.test", "d@wrong.test"):
                s.sendmail("root@localhost", [rcpt], f"Subject: to {rcpt}\r\n\r\nhi\r\n")
        wait_for(lambda: len(sink.sink.messages) >= 2)
        assert sorted(r for m in sink.sink.messages for r in m.recipients) == [
            "a@sts.test", "b@dane.test"]
        assert sink.sink.tls_sessions >= 2
        d.wait_for(r"MTA-STS policy of sts\.test id=1 mode=enforce")

        def queued() -> list[str]:
            return d.smtpctl("show", "queue").stdout.splitlines()
        wait_for(lambda: sum("|1|" in line for line in queued()) >= 2)
        lines = {line.split("|")[5]: line for line in queued()}
        assert "4.7.5 MTA-STS policy of bad.test" in lines["c@bad.test"]
        assert "4.7.5 DANE authentication of mx.wrong.test" in lines["d@wrong.test"]
        assert len(sink.sink.messages) == 2
    finally:
        d.kill_group()
        dns.close()
        sink.close()
