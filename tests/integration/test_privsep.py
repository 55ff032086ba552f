"""Privilege separation proved on the running daemon (issue 10 §6, DESIGN.md §1).

As root, every child's identity and root directory are read from
/proc/<pid>/status and /proc/<pid>/root; what a child cannot do is shown by a
forked process that takes exactly that child's identity (uids, gids,
groups, chroot, no capabilities) and tries: the smtp process cannot read or
list the spool, control and the scheduler see an empty, read-only root, and
only the queue (the positive control) reads a message.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import smtplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imsg import codec
from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon, temp_workdir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation needs root")

CHILDREN = ("control", "lookup", "queue", "scheduler", "smtp")


@dataclass(frozen=True)
class Identity:
    pid: int
    uids: tuple[int, ...]  # real, effective, saved, fs
    gids: tuple[int, ...]
    groups: tuple[int, ...]
    cap_eff: int
    root: str


def identity(pid: int) -> Identity:
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return Identity(pid, tuple(int(x) for x in fields["Uid"].split()),
                    tuple(int(x) for x in fields["Gid"].split()),
                    tuple(int(x) for x in fields["Groups"].split()),
                    int(fields["CapEff"].strip(), 16), os.readlink(f"/proc/{pid}/root"))


def as_process(ident: Identity, probe: Callable[[], object]) -> object:
    """Run `probe` in a fork that has become `ident` (chroot, groups, gid,
    uid, in upstream's order); its result or the errno name it failed with."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(rfd)
            os.chroot(ident.root)
            os.chdir("/")
            os.setgroups(list(ident.groups))
            os.setresgid(*ident.gids[:3])
            os.setresuid(*ident.uids[:3])
            try:
                result: object = probe()
            except OSError as exc:
                result = errno.errorcode.get(exc.errno or 0, str(exc))
            os.write(wfd, codec.pack(result))
        finally:
            os._exit(0)
    os.close(wfd)
    data = b""
    while chunk := os.read(rfd, 65536):
        data += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    return codec.unpack(data)


@dataclass(frozen=True)
class World:
    daemon: Daemon
    ids: dict[str, Identity]
    message: Path  # a message file in the spool


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    work = temp_workdir()
    d = Daemon(work, basic_config(work), args=("-P", "mda"))
    try:
        d.start()
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.sendmail("a@example.com", ["root"], b"Subject: secret\r\n\r\nhi\r\n")
        messages = list((d.spool / "queue").glob("*/*/message"))
        assert len(messages) == 1
        ids = {title.removeprefix("smtpd: "): identity(pid) for title, pid in d.pids().items()}
        yield World(d, ids, messages[0])
    finally:
        d.kill_group()
        shutil.rmtree(work, ignore_errors=True)


def test_only_the_parent_runs_as_root(world: World) -> None:
    smtpd, smtpq = pwd.getpwnam("_smtpd"), pwd.getpwnam("_smtpq")
    assert set(world.ids) == {"parent", *CHILDREN}
    assert world.ids["parent"].uids == (0, 0, 0, 0)
    for name in CHILDREN:
        ident = world.ids[name]
        want = smtpq if name == "queue" else smtpd
        # real, effective, saved and filesystem ids all dropped: no way back
        assert ident.uids == (want.pw_uid,) * 4, name
        assert ident.gids == (want.pw_gid,) * 4, name
        assert ident.groups == (want.pw_gid,), name
        assert ident.cap_eff == 0, name


def test_chroots(world: World) -> None:
    spool = str(world.daemon.spool)
    assert world.ids["queue"].root == spool
    for name in ("scheduler", "control"):
        assert world.ids[name].root == os.path.join(spool, "empty"), name
    # smtp and lookup need /etc (passwd for local submissions, resolv.conf,
    # TLS trust) so they are not chrooted: their protection is the uid.
    for name in ("smtp", "lookup", "parent"):
        assert world.ids[name].root == "/", name


def test_no_child_but_the_queue_holds_spool_files(world: World) -> None:
    spool = str(world.daemon.spool)
    for name in ("smtp", "lookup", "control", "scheduler"):
        pid = world.ids[name].pid
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            assert not target.startswith(spool + "/queue"), (name, target)


def test_smtp_and_lookup_cannot_read_or_list_the_spool(world: World) -> None:
    message = str(world.message)
    queue_dir = str(world.daemon.spool / "queue")
    incoming = str(world.daemon.spool / "incoming" / "forged")
    for name in ("smtp", "lookup"):
        ident = world.ids[name]
        assert as_process(ident, lambda: Path(message).read_bytes()) == "EACCES", name
        assert as_process(ident, lambda: os.listdir(queue_dir)) == "EACCES", name
        assert as_process(ident, lambda: Path(incoming).write_bytes(b"x")) == "EACCES", name
        assert as_process(ident, lambda: os.setuid(0)) == "EPERM", name


def test_control_and_scheduler_see_an_empty_read_only_root(world: World) -> None:
    for name in ("control", "scheduler"):
        ident = world.ids[name]
        assert as_process(ident, lambda: os.listdir("/")) == [], name
        # the mail is not even reachable by name from inside
        assert as_process(ident, lambda: Path("/queue").exists()) is False, name
        assert as_process(ident, lambda: Path("/../queue").exists()) is False, name
        assert as_process(ident, lambda: Path("/x").write_bytes(b"x")) == "EACCES", name


def test_the_queue_reads_the_message_it_owns(world: World) -> None:
    """The positive control: the same mimicry, with the queue's identity,
    does read the message (so the refusals above are not an artefact)."""
    inside = "/" + str(world.message.relative_to(world.daemon.spool))
    data = as_process(world.ids["queue"], lambda: Path(inside).read_bytes())
    assert isinstance(data, bytes) and b"Subject: secret" in data
