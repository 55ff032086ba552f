"""Tables in the running daemon: `smtpctl update table` reloads a file table
without a restart and without dropping the sessions already open."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon


def config(workdir: Path, aliases: Path) -> str:
    return (f"table aliases file:{aliases}\n"
            f"listen on 127.0.0.1 port {free_port()}\n"
            f'action "local" maildir "{workdir}/mail/%{{user.username}}" alias <aliases>\n'
            'match from any for local action "local"\n')


def test_update_table_reloads_aliases(workdir: Path) -> None:
    aliases = workdir / "aliases"
    aliases.write_text("old: root\n")
    aliases.chmod(0o644)
    d = Daemon(workdir, config(workdir, aliases)).start()
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as open_session:
            open_session.ehlo()
            with (smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s,
                  pytest.raises(smtplib.SMTPRecipientsRefused)):
                s.sendmail("a@example.org", ["new@localhost"], b"Subject: 1\r\n\r\nx\r\n")
            aliases.write_text("old: root\nnew: root\n")
            out = d.smtpctl("update", "table", "aliases")
            assert (out.returncode, out.stdout.strip()) == (0, "command succeeded")
            # the session opened before the reload is still served
            assert open_session.noop()[0] == 250
            open_session.sendmail("a@example.org", ["new@localhost"], b"Subject: 2\r\n\r\nx\r\n")
        d.wait_for(r"mda delivery .* to=<root@localhost> rcpt=<new@localhost> .*result=Ok")
        bad = d.smtpctl("update", "table", "nosuchtable")
        assert bad.returncode == 1 and "no table named nosuchtable" in bad.stderr
    finally:
        d.kill_group()
