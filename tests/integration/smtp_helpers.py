"""Raw-socket SMTP client bits and spool readers shared by the test_smtp_* modules."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

from tests.integration.daemon import Daemon

Reply = tuple[int, list[str]]


def raw_connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=10)


def read_reply(sock: socket.socket | ssl.SSLSocket) -> Reply:
    """One (possibly multi-line) reply, read byte by byte so that nothing
    after it is consumed (the next reply or a TLS handshake)."""
    lines: list[str] = []
    while True:
        line = b""
        while not line.endswith(b"\r\n"):
            ch = sock.recv(1)
            if not ch:
                raise ConnectionError(f"closed after {lines!r} {line!r}")
            line += ch
        text = line[:-2].decode()
        lines.append(text[4:])
        if text[3:4] != "-":
            return int(text[:3]), lines


def read_replies(sock: socket.socket, count: int) -> list[Reply]:
    return [read_reply(sock) for _ in range(count)]


def ehlo_keywords(port: int) -> list[str]:
    sock = raw_connect(port)
    try:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\n")
        _code, lines = read_reply(sock)
        sock.sendall(b"QUIT\r\n")
        read_reply(sock)
        return [line.split()[0] for line in lines[1:]]
    finally:
        sock.close()


def parse_envelope(text: str) -> dict[str, str]:
    """The spool's text envelope (smtpd.queue.envelope): `key: value` lines."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key] = value
        elif line.endswith(":"):
            out[line[:-1]] = ""
    return out


def message_dir(spool: Path, msgid: str) -> Path:
    return spool / "queue" / msgid[:2] / msgid


def spool_envelopes(spool: Path, msgid: str | None = None) -> list[dict[str, str]]:
    dirs = [message_dir(spool, msgid)] if msgid else sorted((spool / "queue").glob("*/*"))
    found = []
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.name != "message":
                found.append(parse_envelope(f.read_text()))
    return found


def queued_msgids(spool: Path) -> list[str]:
    return sorted(d.name for d in (spool / "queue").glob("*/*") if d.is_dir())


def wait_envelopes(daemon: Daemon, msgid: str, timeout: float = 5.0) -> list[dict[str, str]]:
    """The envelopes of a message accepted with 250 (on disk before the reply:
    durable commit).  Daemons whose envelopes are inspected run with `-P mda`
    so that delivery cannot remove them first."""
    deadline = time.monotonic() + timeout
    while True:
        envs = spool_envelopes(daemon.spool, msgid)
        if envs:
            assert (message_dir(daemon.spool, msgid) / "message").exists()
            return envs
        if time.monotonic() > deadline:
            raise AssertionError(f"message {msgid} not in {daemon.spool}/queue")
        time.sleep(0.05)


def pause_mda(daemon: Daemon) -> None:
    # `-P mda` should be enough; pausing through smtpctl as well keeps the
    # envelopes in the spool even if a child does not see the flag.
    daemon.smtpctl("pause", "mda")
    status = daemon.smtpctl("show", "status")
    assert "MDA paused" in status.stdout, status
