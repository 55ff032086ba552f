"""PYSMTPD_EVENT_LOOP (smtpd/eventloop.py): the children on uvloop, driven
like any daemon (STARTTLS, delivery, smtpctl), and the refusals of a value
that cannot be honoured.  The parent stays on asyncio's loop: it needs
SIGCHLD, which uvloop keeps for itself."""

from __future__ import annotations

import importlib.util
import smtplib
import ssl
from pathlib import Path

import pytest
import trustme

from smtpd import eventloop
from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon
from tests.integration.queue_helpers import maildir_files, wait_until

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _runs_uvloop(pid: int) -> bool:
    """Whether uvloop's extension module is mapped in the process."""
    return "uvloop" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (pip install '.[fast]')")
def test_children_on_uvloop_receive_deliver_and_answer_smtpctl(workdir: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    mail = workdir / "mail"
    conf = (f'pki localhost cert "{cert}"\npki localhost key "{key}"\n'
            f"listen on 127.0.0.1 port {free_port()} tls pki localhost\n"
            f'action "local" maildir "{mail}/%{{user.username}}"\n'
            'match from any for local action "local"\n')
    d = Daemon(workdir, conf, env={eventloop.ENV: "uvloop"}).start()
    try:
        pids = d.pids()
        for name in ("smtp", "queue", "lookup", "scheduler", "control"):
            assert _runs_uvloop(pids[f"smtpd: {name}"]), name
        assert not _runs_uvloop(pids["smtpd: parent"])
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.starttls(context=ctx)
            s.ehlo("client.test")
            s.sendmail("a@example.com", ["root"], b"Subject: on uvloop\r\n\r\nhi\r\n")
        [path] = wait_until("the delivery", lambda: maildir_files(mail / "root"))
        assert b"Subject: on uvloop" in path.read_bytes()
        status = d.smtpctl("show", "status")
        assert status.returncode == 0 and "MDA running" in status.stdout
        # stats reach control in batches (every 0.25 s): wait for the session's end
        wait_until("smtp.session back to 0",
                   lambda: d.stats().get("smtp.session") == "0" or None, 10)
    finally:
        d.kill_group()


@pytest.mark.parametrize(("value", "said"), [
    ("bogus", "expected one of auto, uvloop, asyncio"),
    pytest.param("uvloop", "uvloop is not installed",
                 marks=pytest.mark.skipif(HAVE_UVLOOP, reason="uvloop is installed here")),
])
def test_an_event_loop_that_cannot_be_had_stops_the_start(workdir: Path, value: str,
                                                          said: str) -> None:
    conf = (f"listen on 127.0.0.1 port {free_port()}\n"
            'action "local" maildir\nmatch from any for local action "local"\n')
    d = Daemon(workdir, conf, env={eventloop.ENV: value}).start(wait_ready=False)
    try:
        assert d.proc is not None and d.proc.wait(20) == 1
        d.wait_for(said)
    finally:
        d.kill_group()


def test_check_and_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "_uvloop", lambda: None)
    monkeypatch.setattr(eventloop, "_uvloop_installed", lambda: False)
    for value, expected in (("", "asyncio"), ("auto", "asyncio"), ("ASYNCIO", "asyncio")):
        monkeypatch.setenv(eventloop.ENV, value)
        assert eventloop.check() == expected
    monkeypatch.setenv(eventloop.ENV, "uvloop")
    with pytest.raises(eventloop.EventLoopError, match="not installed"):
        eventloop.check()
    with pytest.raises(eventloop.EventLoopError, match="not installed"):
        eventloop.new_event_loop()
