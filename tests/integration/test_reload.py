"""Configuration reload (issue 15): SIGHUP and `smtpctl reload` re-read
smtpd.conf without dropping sessions or queued mail; a bad file is refused
with file:line and the running configuration stays."""

from __future__ import annotations

import signal
import smtplib
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon


def config(workdir: Path, port: int, accepted: str) -> str:
    return (f"listen on 127.0.0.1 port {port}\n"
            f'action "local" maildir "{workdir}/mail/%{{user.username}}" '
            f'alias {{ {accepted} = root }}\n'
            'match from any for local action "local"\n')


def test_reload_new_rules_keep_sessions_and_refuse_bad_files(workdir: Path) -> None:
    port = free_port()
    d = Daemon(workdir, config(workdir, port, "before"), args=("-P", "mda")).start()
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as open_session:
            open_session.ehlo()
            open_session.sendmail("a@example.org", ["before@localhost"], b"Subject: q\r\n\r\nx\r\n")
            header = d.conf.read_text().split("listen on")[0]
            d.conf.write_text(header + config(workdir, port, "after"))
            out = d.smtpctl("reload")
            assert (out.returncode, out.stdout.splitlines()[0]) == (0, "configuration reloaded")
            d.wait_for("lookup: rules and tables reloaded")
            # the session opened before is still served, with the new rules
            assert open_session.noop()[0] == 250
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                open_session.sendmail("a@example.org", ["before@localhost"], b"x")
            open_session.sendmail("a@example.org", ["after@localhost"], b"Subject: r\r\n\r\nx\r\n")
        # queued mail survived the reload
        assert len(d.smtpctl("show", "queue").stdout.splitlines()) == 2
        # a broken file is refused with file:line; the running config stays
        good = d.conf.read_text()
        d.conf.write_text(good + "frobnicate the queue\n")
        bad = d.smtpctl("reload")
        assert bad.returncode == 1
        assert f"{d.conf}:" in bad.stderr and "reload refused" in bad.stderr
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(r"reload refused: .*smtpd.conf:\d+:")
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.sendmail("a@example.org", ["after@localhost"], b"Subject: s\r\n\r\nx\r\n")
        # SIGHUP with a good file
        d.conf.write_text(good)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("info: configuration reloaded")
        assert d.proc.poll() is None and "Traceback" not in d.log_text()
    finally:
        d.kill_group()
