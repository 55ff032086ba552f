"""Running out of descriptors without dying (the seed): below its reserve the
smtp process stops accepting, keeps serving open sessions, and resumes."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon

NOFILE = 96


def test_descriptor_exhaustion_pauses_accepting(workdir: Path) -> None:
    d = Daemon(workdir, basic_config(workdir), nofile=NOFILE).start()
    held: list[socket.socket] = []
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as busy:
            busy.ehlo()
            greeted = 0
            for _ in range(NOFILE):
                conn = socket.create_connection(("127.0.0.1", d.port), timeout=10)
                conn.settimeout(1.0)
                held.append(conn)
                try:
                    if conn.recv(512).startswith(b"220"):
                        greeted += 1
                        continue
                except TimeoutError:
                    break  # not accepted: the reserve is reached
            assert 0 < greeted < NOFILE
            d.wait_for("smtp: not accepting new clients", 10)
            # the session that was already open is still served
            assert busy.noop()[0] == 250
            # control keeps answering smtpctl
            assert d.smtpctl("show", "stats").returncode == 0
            waiting = held[-1]
            for conn in held[:-1]:
                conn.close()
            held = [waiting]
            waiting.settimeout(10)
            assert waiting.recv(512).startswith(b"220")   # accepted once fds are free
            d.wait_for("smtp: accepting clients again", 10)
        assert d.proc is not None and d.proc.poll() is None
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            assert s.noop()[0] == 250
        assert "Traceback" not in d.log_text()
    finally:
        for conn in held:
            conn.close()
        d.kill_group()
