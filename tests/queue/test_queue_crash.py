"""SIGKILL a process committing messages, then recover: every message whose
commit returned (the 250) is intact, nothing half-written is walked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smtpd.queue.backend import Kind
from smtpd.queue.front import QueueFront
from smtpd.queue.fs import FsBackend

WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from smtpd.queue.envelope import DeliveryType, Envelope
    from smtpd.queue.front import QueueFront
    from smtpd.queue.fs import FsBackend
    spool = Path(sys.argv[1])
    front = QueueFront(FsBackend(spool), spool=spool, compression=True,
                       encryption_key=sys.argv[2] or None, kdf_n=2**14)
    env = Envelope(evpid=0, type=DeliveryType.MDA, dispatcher="local", sender="a@b.test",
                   rcpt="c@d.test", dest="c", ctime=1, ttl=100)
    n = 0
    while True:
        n += 1
        msgid = front.message_create()
        body = b"Received: x\\n\\n" + (b"message %d\\n" % n) * (1 + n % 50) * 40
        with os.fdopen(front.message_fd(msgid), "wb") as f:
            f.write(body)
        for _ in range(1 + n % 4):
            front.envelope_create(msgid, env)
        front.message_commit(msgid)
        print(f"{msgid:08x} {n} {1 + n % 4}", flush=True)  # the 250
""")


@pytest.mark.parametrize(
    ("acks", "pause", "key"), [(5, 0.0, ""), (20, 0.003, "k"), (40, 0.011, ""), (10, 0.001, "k")]
)
def test_sigkill_during_commits(tmp_path: Path, acks: int, pause: float, key: str) -> None:
    spool = tmp_path / "spool"
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(spool), key], stdout=subprocess.PIPE,
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
    )
    lines: list[bytes] = []
    try:
        assert proc.stdout is not None
        while len(lines) < acks:
            line = proc.stdout.readline()
            assert line, "the writer died"
            lines.append(line)
        time.sleep(pause)  # land the kill at varying points of the next commits
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=20)
    text = b"".join(lines).decode() + out.decode()
    acked = [line.split() for line in text.splitlines() if line.count(" ") == 2]
    assert len(acked) >= acks
    front = QueueFront(FsBackend(spool), spool=spool, compression=True,
                       encryption_key=key or None)
    front.recover()
    by_msg: dict[int, int] = {}
    for env in front.walk():
        by_msg[env.msgid] = by_msg.get(env.msgid, 0) + 1
    for msgid_hex, n, rcpts in acked:
        msgid = int(msgid_hex, 16)
        assert by_msg.get(msgid) == int(rcpts), f"acknowledged message {msgid_hex} lost"
        with front.message_open(msgid) as f:
            assert f.read().startswith(b"Received: x\n\nmessage %d\n" % int(n))
    # Only the message in flight when killed may exist beyond the acked ones,
    # and only whole: its commit point passed, the 250 was not sent yet.
    extra = set(by_msg) - {int(m, 16) for m, _, _ in acked}
    assert len(extra) <= 1
    for msgid in extra:
        nxt = int(acked[-1][1]) + 1
        assert by_msg[msgid] == 1 + nxt % 4, "a half-committed message was walked"
        with front.message_open(msgid) as f:
            assert f.read().startswith(b"Received: x\n\nmessage %d\n" % nxt)
    assert list(os.scandir(spool / "incoming")) == []
    assert list(os.scandir(spool / "temporary")) == []
    assert list(front.backend.list(Kind.CORRUPT_MESSAGE)) == []
