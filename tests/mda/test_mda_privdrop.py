"""Every method works in a forked child that dropped to an unprivileged user.

This is how the parent runs deliveries; it catches what only shows there
(a module imported lazily from a venv the user cannot read, a file the
user cannot create).  Needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpd.mda import deliver
from smtpd.mda.types import DeliveryMethod, DeliveryRequest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
NOBODY = 65534
MSG = b"Subject: x\n\nbody\n"


@pytest.fixture
def home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="mda-drop-", dir="/tmp"))  # traversable by nobody
    try:
        base.chmod(0o755)
        h = base / "home"
        h.mkdir()
        os.chown(h, NOBODY, NOBODY)
        yield h
    finally:
        shutil.rmtree(base)


def _deliver_as_nobody(req: DeliveryRequest, src: Path) -> dict[str, Any]:
    fd = os.open(src, os.O_RDONLY)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgroups([NOBODY])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            with os.fdopen(fd, "rb", closefd=False) as source:
                res = deliver(req, source)
            os.write(w, json.dumps([res.status.value, res.text]).encode())
            code = 0
        except BaseException as exc:
            os.write(w, json.dumps(["crash", repr(exc)]).encode())
        finally:
            os._exit(code)
    os.close(w)
    os.close(fd)
    try:
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    status, text = json.loads(data)
    return {"status": status, "text": text}


def _req(home: Path, method: DeliveryMethod, **kw: Any) -> DeliveryRequest:
    return DeliveryRequest(
        evpid=1,
        sender="a@b.test",
        rcpt="nobody@x.test",
        orig_rcpt="nobody@x.test",
        user="nobody",
        uid=NOBODY,
        gid=NOBODY,
        home=str(home),
        method=method,
        hostname="vm.test",
        timeout=10,
        **kw,
    )


def test_maildir_mbox_mda(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "message"
    src.write_bytes(MSG)
    out = _deliver_as_nobody(_req(home, DeliveryMethod.MAILDIR), src)
    assert out["status"] == "ok", out
    (f,) = (home / "Maildir" / "new").iterdir()
    assert f.stat().st_uid == NOBODY
    out = _deliver_as_nobody(_req(home, DeliveryMethod.MBOX, mbox_path=f"{home}/mbox"), src)
    assert out["status"] == "ok", out
    assert (home / "mbox").stat().st_uid == NOBODY
    out = _deliver_as_nobody(_req(home, DeliveryMethod.MDA, command="cat > out.txt"), src)
    assert out["status"] == "ok", out
    assert (home / "out.txt").read_bytes().endswith(MSG)


def _lmtp_server_once(sock: socket.socket) -> None:  # pragma: no cover - child
    conn, _ = sock.accept()
    rf, wf = conn.makefile("rb"), conn.makefile("wb", buffering=0)
    wf.write(b"220 ready\r\n")
    while line := rf.readline():
        verb = line[:4].upper()
        if verb == b"DATA":
            wf.write(b"354 go\r\n")
            while rf.readline() not in (b".\r\n", b""):
                pass
            wf.write(b"250 2.0.0 saved\r\n")
        elif verb == b"QUIT":
            wf.write(b"221 bye\r\n")
            return
        else:
            wf.write(b"250 ok\r\n")


def test_lmtp_to_a_host_name(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "message"
    src.write_bytes(MSG)
    sock = socket.create_server(("127.0.0.1", 0))
    # a process, not a thread: the delivery child is forked next
    server = os.fork()
    if server == 0:  # pragma: no cover - child
        try:
            sock.settimeout(20)
            _lmtp_server_once(sock)
        finally:
            os._exit(0)
    try:
        dest = f"localhost:{sock.getsockname()[1]}"  # a name: needs the idna codec
        out = _deliver_as_nobody(_req(home, DeliveryMethod.LMTP, lmtp_dest=dest), src)
    finally:
        sock.close()
        os.kill(server, 9)
        os.waitpid(server, 0)
    assert out["status"] == "ok", out
