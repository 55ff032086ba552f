"""smtpctl show envelope / show message / unknown ids, as an operator types them."""

from __future__ import annotations

import smtplib
from pathlib import Path

from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon


def test_show_envelope_and_message(workdir: Path) -> None:
    d = Daemon(workdir, basic_config(workdir), args=("-P", "mda")).start()
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.sendmail("alice@example.org", ["root@localhost"],
                       b"Subject: inspect me\r\n\r\nbody line\r\n")
        line = d.smtpctl("show", "queue").stdout.splitlines()[0]
        evpid = line.split("|")[0]
        env = d.smtpctl("show", "envelope", evpid)
        assert env.returncode == 0
        fields = dict(x.split(": ", 1) for x in env.stdout.splitlines())
        assert fields["version"] == "3"
        assert fields["rcpt"] == "root@localhost"
        assert fields["sender"] == "alice@example.org"
        assert fields["type"] == "mda"
        for ident in (evpid, evpid[:8]):
            msg = d.smtpctl("show", "message", ident)
            assert msg.returncode == 0
            assert "Subject: inspect me" in msg.stdout and "body line" in msg.stdout
            assert msg.stdout.startswith("Received: from ")
        missing = d.smtpctl("show", "envelope", "0123456789abcdef")
        assert missing.returncode == 1 and "no such envelope" in missing.stderr
        assert d.smtpctl("show", "message", "01234567").returncode == 1
        removed = d.smtpctl("remove", "0123456789abcdef")
        assert (removed.returncode, removed.stdout) == (0, "0 envelope removed\n")
        bad = d.smtpctl("show", "envelope", "zz")
        assert bad.returncode == 1 and "invalid command" in bad.stderr
    finally:
        d.kill_group()
