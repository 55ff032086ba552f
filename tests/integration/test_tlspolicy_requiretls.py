"""REQUIRETLS (RFC 8689) end to end: offered only under TLS, accepted on
MAIL FROM, kept in the envelope, passed on to a verified peer that offers
it, bounced with 5.7.10 when the next hop does not."""

from __future__ import annotations

import email
import smtplib
import ssl
from pathlib import Path

import trustme

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon
from tests.integration.test_relay import ThreadedSink, wait_for
from tests.mta.sink import SinkConfig


def test_requiretls_end_to_end(workdir: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_path = workdir / "cert.pem", workdir / "key.pem", workdir / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    ca.cert_pem.write_to_path(str(ca_path))
    ca_path.chmod(0o644)
    sink_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(sink_ctx)
    able = ThreadedSink(SinkConfig(tls=sink_ctx, requiretls=True))
    unable = ThreadedSink(SinkConfig(tls=sink_ctx))
    config = (f'pki localhost cert "{cert}"\n'
              f'pki localhost key "{key}"\n'
              f'ca myca cert "{ca_path}"\n'
              f"listen on 127.0.0.1 port {free_port()} tls pki localhost\n"
              f'action "local" maildir "{workdir}/mail/%{{user.username}}"\n'
              f'action "able" relay host smtp+tls://localhost:{able.port} ca myca\n'
              f'action "unable" relay host smtp+tls://localhost:{unable.port} ca myca\n'
              'match from any for local action "local"\n'
              'match from local for domain "able.test" action "able"\n'
              'match from local for domain "unable.test" action "unable"\n')
    d = Daemon(workdir, config).start()
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.ehlo("client.test")
            assert not s.has_extn("requiretls")  # RFC 8689 §4.1: only under TLS
            code, _ = s.docmd("MAIL FROM:<root@localhost> REQUIRETLS")
            assert code // 100 == 5
            s.rset()
            s.starttls(context=client_ctx)
            s.ehlo("client.test")
            assert s.has_extn("requiretls")
            for rcpt in ("x@able.test", "y@unable.test"):
                s.sendmail("root@localhost", [rcpt], f"Subject: {rcpt}\r\n\r\nsecret\r\n",
                           mail_options=["REQUIRETLS"])
            # without the parameter: relayed to the peer without REQUIRETLS
            s.sendmail("root@localhost", ["z@unable.test"], b"Subject: plain\r\n\r\nhi\r\n")
        wait_for(lambda: len(able.sink.messages) == 1 and len(unable.sink.messages) == 1)
        assert able.sink.messages[0].mail_line.endswith(" REQUIRETLS")
        assert unable.sink.messages[0].recipients == ["z@unable.test"]
        bounce_dir = workdir / "mail" / "root" / "new"
        wait_for(lambda: bounce_dir.exists() and any(bounce_dir.iterdir()))
        dsn = email.message_from_bytes(next(bounce_dir.iterdir()).read_bytes())
        text = dsn.as_string()
        assert "y@unable.test" in text and "5.7.10" in text
    finally:
        d.kill_group()
        able.close()
        unable.close()
