from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpd.crypto.stream import CHUNK_SIZE
from smtpd.queue import fs as fs_module
from smtpd.queue.backend import BACKENDS, Kind, QueueBackend, make_backend
from smtpd.queue.envelope import DeliveryType, Envelope, EnvelopeFlag
from smtpd.queue.errors import KeyUnavailable, NotFound, QueueCorrupt, QueueError, WrongKey
from smtpd.queue.front import QueueFront
from smtpd.queue.fs import FsBackend

KDF_N = 2**14  # the minimum accepted; keeps the tests fast
BODY_MARK = b"PLAINTEXT-BODY-MARKER"
RCPT_MARK = "secret-recipient"


def make_env(rcpt: str = f"{RCPT_MARK}@example.net", **kw: object) -> Envelope:
    base: dict[str, object] = dict(
        evpid=0, type=DeliveryType.MDA, dispatcher="local_mail", sender="alice@example.org",
        rcpt=rcpt, dest="bob", ctime=1_700_000_000, ttl=345600,
        helo="client.example.org", hostname="client.example.org", sockaddr="192.0.2.1",
        smtpname="mx.example.net", flags=EnvelopeFlag.AUTHENTICATED, mda_user="bob",
    )
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


def message_bytes(size: int) -> bytes:
    head = b"Received: from client (client [192.0.2.1])\n\tby mx with ESMTP\n" + BODY_MARK + b"\n"
    filler = b"The quick brown fox jumps over the lazy dog. " + BODY_MARK + b"\n"
    return (head + filler * (size // len(filler) + 1))[:size]


def submit(front: QueueFront, data: bytes, rcpts: int = 2) -> tuple[int, list[int]]:
    msgid = front.message_create()
    fd = front.message_fd(msgid)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    evpids = [front.envelope_create(msgid, make_env(f"{RCPT_MARK}{i}@example.net"))
              for i in range(rcpts)]
    committed = front.message_commit(msgid)
    assert [e.evpid for e in committed] == sorted(evpids)
    return msgid, sorted(evpids)


Factory = Callable[..., QueueFront]


@pytest.fixture(params=sorted(BACKENDS))
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    spool = tmp_path / "spool"
    backend: QueueBackend = make_backend(request.param, spool)

    def make(**kw: object) -> QueueFront:
        nonlocal backend
        if request.param == "fs":  # a fresh backend, as after a restart
            backend = make_backend("fs", spool)
        kw.setdefault("kdf_n", KDF_N)
        return QueueFront(backend, spool=spool, **kw)  # type: ignore[arg-type]

    return make


MODES = [(False, None), (True, None), (False, "k3y"), (True, "k3y")]


@pytest.mark.parametrize(("compression", "key"), MODES)
@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 1_000_000])
def test_round_trip_all_modes(factory: Factory, compression: bool, key: str | None,
                              size: int) -> None:
    front = factory(compression=compression, encryption_key=key)
    data = message_bytes(size)
    msgid, evpids = submit(front, data)
    # A restarted front (new backend object on the same spool for fs) reads it all.
    again = factory(compression=compression, encryption_key=key)
    assert again.recover().incoming == 0
    with again.message_open(msgid) as f:
        assert f.read() == data
    fd = again.message_fd_for_delivery(msgid)
    try:
        assert os.read(fd, size + 10) == data
        with pytest.raises(OSError):
            os.write(fd, b"x")  # read-only for the MDA
    finally:
        os.close(fd)
    envs = list(again.walk())
    assert [e.evpid for e in envs] == sorted(evpids)
    assert sorted(envs, key=lambda e: e.rcpt) == [
        make_env(f"{RCPT_MARK}{i}@example.net", evpid=e.evpid)
        for i, e in enumerate(sorted(envs, key=lambda e: e.rcpt))
    ]


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_spool_files_on_disk(tmp_path: Path, compression: bool, key: str | None) -> None:
    spool = tmp_path / "spool"
    backend = FsBackend(spool)
    front = QueueFront(backend, spool=spool, compression=compression, encryption_key=key,
                       kdf_n=KDF_N)
    msgid, evpids = submit(front, message_bytes(200_000))
    msg_file = backend.path(Kind.MESSAGE, msgid)
    assert msg_file == spool / "queue" / f"{msgid >> 24:02x}" / f"{msgid:08x}" / "message"
    files = [msg_file] + [backend.path(Kind.ENVELOPE, e) for e in evpids]
    for f in files:
        assert f.is_file() and f.stat().st_mode & 0o777 == 0o600
        head = f.read_bytes()[:2]
        if key:
            assert head[0] == 0x01
        elif compression:
            assert head == b"\x1f\x8b"
    assert spool.stat().st_mode & 0o777 == 0o711
    for name in ("incoming", "queue", "corrupt", "purge", "temporary"):
        assert (spool / name).stat().st_mode & 0o777 == 0o700
    assert (spool / "offline").stat().st_mode & 0o777 == 0o770
    everything = b"".join(p.read_bytes() for p in spool.rglob("*") if p.is_file())
    if key:
        # No plaintext anywhere in the spool: body, recipients, envelope keys.
        assert BODY_MARK not in everything
        assert RCPT_MARK.encode() not in everything and b"evpid: " not in everything
    else:
        assert (BODY_MARK in everything) != compression
    if compression and not key and shutil.which("gzip"):
        out = subprocess.run(["gzip", "-dc", str(files[1])], capture_output=True, check=True,
                             timeout=20)
        assert out.stdout.startswith(b"version: 1\nevpid: ")
        assert RCPT_MARK.encode() in out.stdout
        out = subprocess.run(["gzip", "-dc", str(msg_file)], capture_output=True, check=True,
                             timeout=20)
        assert out.stdout == message_bytes(200_000)


def test_incoming_fd_and_rollback(factory: Factory) -> None:
    front = factory()
    msgid = front.message_create()
    path = front.message_path(msgid)
    fd = front.message_fd(msgid)
    os.write(fd, b"partial")
    os.close(fd)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(QueueError, match="already opened"):
        front.message_fd(msgid)
    with pytest.raises(QueueError, match="no envelopes"):
        front.message_commit(msgid)
    front.message_rollback(msgid)
    assert not path.parent.exists()
    with pytest.raises(NotFound):
        front.message_commit(msgid)
    with pytest.raises(NotFound):
        front.message_open(msgid)
    other = front.message_create()
    front.envelope_create(other, make_env())
    with pytest.raises(QueueError, match="no message data"):
        front.message_commit(other)


def test_recover_removes_crash_leftovers(factory: Factory) -> None:
    front = factory(compression=True)
    kept, kept_evps = submit(front, b"Received: x\n\nkept\n")
    # A session cut short while receiving: incoming/ holds its data.
    leftover = front.message_create()
    os.close(front.message_fd(leftover))
    front.envelope_create(leftover, make_env())
    # A commit cut short before its commit point: envelopes without a message.
    half, _ = submit(front, b"Received: x\n\nhalf\n")
    front.backend.delete(Kind.MESSAGE, half)
    # A removal cut short: a message without envelopes.
    _, gone_evps = submit(front, b"Received: x\n\ngone\n")
    for e in gone_evps:
        front.backend.delete(Kind.ENVELOPE, e)

    # A put cut short (fs writes to temporary/ before its rename).
    (front.spool / "temporary" / "put.0123456789abcdef").write_bytes(b"half")

    restarted = factory(compression=True)
    report = restarted.recover()
    assert list(os.scandir(restarted.spool / "temporary")) == []
    assert (report.incoming, report.orphan_envelopes, report.orphan_messages) == (1, 2, 1)
    assert list(os.scandir(restarted.spool / "incoming")) == []
    assert [e.evpid for e in restarted.walk()] == sorted(kept_evps)
    assert list(restarted.backend.list(Kind.MESSAGE)) == [kept]
    assert restarted.recover() == type(report)(0, 0, 0)


def test_envelope_update_delete_and_bounce(factory: Factory) -> None:
    front = factory(compression=True, encryption_key="k")
    msgid, (e1, e2) = submit(front, b"Received: x\n\nhi\n")
    env = front.envelope_load(e1)
    front.envelope_update(dataclasses.replace(env, retry=1, errorline="450 4.2.0 later\r\nx: y"))
    fresh = factory(compression=True, encryption_key="k")
    assert fresh.envelope_load(e1).retry == 1
    assert fresh.envelope_load(e1).errorline == "450 4.2.0 later\r\nx: y"
    # A bounce envelope added to a committed message is written at once.
    bounce = fresh.envelope_create(msgid, make_env(type=DeliveryType.BOUNCE))
    assert bounce >> 32 == msgid
    assert fresh.message_envelopes(msgid) == sorted([e1, e2, bounce])
    assert fresh.envelope_delete(e1) is False
    assert fresh.envelope_delete(e2) is False
    with pytest.raises(NotFound):
        fresh.envelope_load(e1)
    with pytest.raises(NotFound):
        fresh.envelope_update(env)  # a removed envelope is never resurrected
    with pytest.raises(NotFound):
        fresh.envelope_delete(e1)
    assert fresh.envelope_delete(bounce) is True  # the last one takes the message along
    with pytest.raises(NotFound):
        fresh.message_open(msgid)
    with pytest.raises(NotFound):
        fresh.envelope_create(msgid, make_env())


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_a_plain_message_is_moved_in_and_handed_out_as_stored(
        tmp_path: Path, compression: bool, key: str | None) -> None:
    spool = tmp_path / "spool"
    backend = FsBackend(spool)
    front = QueueFront(backend, spool=spool, compression=compression, encryption_key=key,
                       kdf_n=KDF_N)
    data = message_bytes(100_000)
    msgid = front.message_create()
    with os.fdopen(front.message_fd(msgid), "wb") as f:
        f.write(data)
    received = os.stat(front.message_path(msgid)).st_ino
    front.envelope_create(msgid, make_env())
    front.message_commit(msgid)
    stored = backend.path(Kind.MESSAGE, msgid).stat()
    plain = not compression and key is None
    # as is: the received file itself (no copy); encoded: a new file
    assert (stored.st_ino == received) is plain
    assert not (spool / "incoming" / f"{msgid:08x}").exists()
    fd = front.message_fd_for_delivery(msgid)
    try:
        st = os.fstat(fd)
        # plain: the stored file, read-only; else a decoded unlinked copy
        assert (st.st_ino == stored.st_ino) is plain
        assert st.st_nlink == (1 if plain else 0)
        with pytest.raises(OSError):
            os.write(fd, b"x")
        assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        os.close(fd)


@pytest.mark.parametrize("compression", [False, True])
def test_fs_commit_renames_the_incoming_directory(tmp_path: Path, compression: bool) -> None:
    spool = tmp_path / "spool"
    backend = FsBackend(spool)
    front = QueueFront(backend, spool=spool, compression=compression, kdf_n=KDF_N)
    msgids, inodes = [], []
    for n in range(3):
        msgid = front.message_create()
        with os.fdopen(front.message_fd(msgid), "wb") as f:
            f.write(b"Received: x\n\nmessage %d\n" % n)
        front.envelope_create(msgid, make_env())
        msgids.append(msgid)
        inodes.append(os.stat(spool / "incoming" / f"{msgid:08x}").st_ino)
    results = front.message_commit_many(msgids)
    assert [m for m, r in results if isinstance(r, list)] == msgids
    for n, (msgid, inode) in enumerate(zip(msgids, inodes, strict=True)):
        mdir = backend.path(Kind.MESSAGE, msgid).parent
        assert os.stat(mdir).st_ino == inode  # the same directory, renamed
        names = sorted(os.listdir(mdir))
        assert len(names) == 2 and "message" in names  # no .new left behind
        with front.message_open(msgid) as src:
            assert src.read() == b"Received: x\n\nmessage %d\n" % n
        head = backend.path(Kind.MESSAGE, msgid).read_bytes()[:2]
        assert (head == b"\x1f\x8b") is compression
    assert os.listdir(spool / "incoming") == []


def test_fs_adopt_failing_half_way_leaves_no_message_in_the_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "spool"
    backend = FsBackend(spool)
    front = QueueFront(backend, spool=spool, kdf_n=KDF_N)
    msgids = []
    for _ in range(3):
        msgid = front.message_create()
        os.close(front.message_fd(msgid))
        front.envelope_create(msgid, make_env())
        msgids.append(msgid)
    real_rename = os.rename
    renamed: list[str] = []

    def rename(src: str, dst: str) -> None:
        if Path(dst).parent.parent.name == "queue" and renamed:
            raise OSError(28, "No space left on device")
        real_rename(src, dst)
        renamed.append(str(dst))

    monkeypatch.setattr(fs_module.os, "rename", rename)
    results = front.message_commit_many(msgids)
    monkeypatch.undo()
    assert renamed and all(isinstance(r, OSError) for _m, r in results)
    assert list(front.walk()) == [] and list(backend.list(Kind.MESSAGE)) == []
    for msgid in msgids:
        front.message_rollback(msgid)
    assert os.listdir(spool / "incoming") == []
    with pytest.raises(ValueError, match="not a blob of message"):
        backend.adopt_many([(1, spool / "incoming", [(Kind.ENVELOPE, (2 << 32) | 1, b"x")])])


def test_envelope_delete_many_takes_emptied_messages_along(factory: Factory) -> None:
    front = factory()
    m1, (a1, a2) = submit(front, b"Received: x\n\none\n")
    m2, (b1, b2, b3) = submit(front, b"Received: x\n\ntwo\n", rcpts=3)
    front.envelope_load(b1)  # cached: the batch must evict it too
    results = front.envelope_delete_many([a1, a2, b1, a1])
    assert results == [True, True, False]  # the repeat of a1 counts once
    with pytest.raises(NotFound):
        front.message_open(m1)
    with pytest.raises(NotFound):
        front.envelope_load(b1)
    fresh = factory()
    assert [e.evpid for e in fresh.walk()] == [b2, b3]
    [gone, last] = fresh.envelope_delete_many([b1, b2])
    assert isinstance(gone, NotFound) and last is False
    assert fresh.envelope_delete_many([b3]) == [True]
    assert list(fresh.walk()) == [] and fresh.envelope_delete_many([]) == []
    with pytest.raises(NotFound):
        fresh.message_open(m2)


def test_keep_message_and_message_delete(factory: Factory) -> None:
    front = factory()
    msgid, (e1, e2) = submit(front, b"Received: x\n\nhi\n")
    assert front.envelope_delete(e1, keep_message=True) is False
    assert front.envelope_delete(e2, keep_message=True) is False
    front.message_open(msgid).close()
    front.message_delete(msgid)
    with pytest.raises(NotFound):
        front.message_open(msgid)
    m2, _ = submit(front, b"Received: x\n\nhi\n", rcpts=3)
    front.message_delete(m2)
    assert list(front.walk()) == []


def test_cache_stats_and_lru(factory: Factory) -> None:
    _, (e0, e1, e2) = submit(factory(), b"Received: x\n\nhi\n", rcpts=3)
    front = factory(cache_size=2)
    for evpid in (e0, e1, e2, e2, e1, e0):  # miss miss miss(evicts e0) hit hit miss
        front.envelope_load(evpid)
    front.envelope_update(dataclasses.replace(front.envelope_load(e0), retry=2))  # hit
    front.envelope_update(dataclasses.replace(front.envelope_load(e0), evpid=e2))  # e2 evicted
    assert front.stats() == {
        "queue.evpcache.load.hit": 4,
        "queue.evpcache.load.missed": 4,
        "queue.evpcache.update.hit": 1,
        "queue.evpcache.update.missed": 1,
        "queue.evpcache.size": 2,
    }
    assert factory().envelope_load(e0).retry == 2
    no_cache = factory(cache_size=0)
    no_cache.envelope_load(e0)
    no_cache.envelope_load(e0)
    assert no_cache.stats()["queue.evpcache.load.missed"] == 2


def _tamper(front: QueueFront, kind: Kind, oid: int, pos: int = -5) -> None:
    with front.backend.get(kind, oid) as f:
        data = bytearray(f.read())
    data[pos] ^= 0x01
    front.backend.put(kind, oid, bytes(data))


@pytest.mark.parametrize(("compression", "key"), MODES[1:])
def test_tampered_message_is_reported_not_fatal(factory: Factory, compression: bool,
                                                key: str | None) -> None:
    front = factory(compression=compression, encryption_key=key)
    good, _ = submit(front, message_bytes(150_000))
    bad, _ = submit(front, message_bytes(150_000))
    _tamper(front, Kind.MESSAGE, bad, pos=100)
    with pytest.raises(QueueCorrupt) as info:
        front.message_fd_for_delivery(bad)
    assert info.value.kind is Kind.MESSAGE and info.value.msgid == bad
    assert f"{bad:08x}" in str(info.value)
    with pytest.raises(QueueCorrupt), front.message_open(bad) as f:
        f.read()
    front.corrupt(bad, str(info.value))
    assert list(front.backend.list(Kind.CORRUPT_MESSAGE)) == [bad]
    with front.backend.get(Kind.CORRUPT_REASON, bad) as f:
        assert f"{bad:08x}".encode() in f.read()
    with front.message_open(good) as f:
        assert f.read() == message_bytes(150_000)
    assert {e.msgid for e in front.walk()} == {good}


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_corrupt_envelope_in_walk_moves_message_aside(factory: Factory, compression: bool,
                                                      key: str | None) -> None:
    front = factory(compression=compression, encryption_key=key)
    good, good_evps = submit(front, b"Received: x\n\ngood\n")
    bad, bad_evps = submit(front, b"Received: x\n\nbad\n")
    if key or compression:
        _tamper(front, Kind.ENVELOPE, bad_evps[1])
    else:
        front.backend.put(Kind.ENVELOPE, bad_evps[1], b"version: 1\nflags: internal\n")
    fresh = factory(compression=compression, encryption_key=key)
    with pytest.raises(QueueCorrupt) as info:
        fresh.envelope_load(bad_evps[1])
    assert f"{bad_evps[1]:016x}" in str(info.value)
    reported: list[QueueCorrupt | KeyUnavailable] = []
    assert [e.evpid for e in fresh.walk(reported.append)] == good_evps
    assert [r.msgid for r in reported] == [bad]
    assert list(fresh.backend.list(Kind.CORRUPT_ENVELOPE)) == bad_evps
    assert list(fresh.backend.list(Kind.MESSAGE)) == [good]


def test_swapped_files_are_detected(factory: Factory) -> None:
    front = factory(encryption_key="k")
    m1, e1 = submit(front, b"Received: x\n\none\n")
    m2, e2 = submit(front, b"Received: x\n\ntwo\n")
    with front.backend.get(Kind.MESSAGE, m1) as f:
        front.backend.put(Kind.MESSAGE, m2, f.read())
    with front.backend.get(Kind.ENVELOPE, e1[0]) as f:
        front.backend.put(Kind.ENVELOPE, e2[0], f.read())
    fresh = factory(encryption_key="k")  # nothing cached
    with pytest.raises(QueueCorrupt, match="authentication failed"), fresh.message_open(m2) as f:
        f.read()
    with pytest.raises(QueueCorrupt, match="authentication failed"):
        fresh.envelope_load(e2[0])


def test_wrong_key_refused_at_start(factory: Factory) -> None:
    front = factory(encryption_key="right")
    submit(front, b"Received: x\n\nhi\n")
    with pytest.raises(WrongKey, match="does not match"):
        factory(encryption_key="wrong")
    with pytest.raises(WrongKey, match="empty"):
        factory(encryption_key="")


def test_missing_key_is_not_corruption(factory: Factory) -> None:
    """Dropping ``queue encryption`` with encrypted mail queued must not
    move every message to corrupt/: the files wait for the key."""
    front = factory(encryption_key="k")
    msgid, evpids = submit(front, b"Received: x\n\nhi\n")
    plain = factory()
    with pytest.raises(KeyUnavailable, match="no queue encryption key") as info:
        plain.envelope_load(evpids[0])
    assert info.value.msgid == msgid
    with pytest.raises(KeyUnavailable):
        plain.message_fd_for_delivery(msgid)
    reported: list[QueueCorrupt | KeyUnavailable] = []
    assert list(plain.walk(reported.append)) == []
    assert [type(r) for r in reported] == [KeyUnavailable]
    assert plain.rewrite_all() == 0
    assert list(plain.backend.list(Kind.CORRUPT_MESSAGE)) == []
    assert [e.evpid for e in factory(encryption_key="k").walk()] == evpids


def test_key_rotation_and_rewrite(factory: Factory) -> None:
    front = factory(compression=True, encryption_key="old")
    msgid, evpids = submit(front, message_bytes(100_000))
    rotated = factory(compression=True, encryption_key="new", old_keys=["old"])
    assert [e.evpid for e in rotated.walk()] == evpids
    assert rotated.rewrite_all() == 3
    only_new = factory(compression=True, encryption_key="new")
    with only_new.message_open(msgid) as f:
        assert f.read() == message_bytes(100_000)
    assert [e.evpid for e in only_new.walk()] == evpids
    with pytest.raises(WrongKey):
        factory(encryption_key="old")  # the spool is now the new key's


def test_migration_between_modes(factory: Factory) -> None:
    """Turning compression/encryption on or off keeps old mail readable."""
    data = message_bytes(70_000)
    written = []
    for compression, key in MODES:
        front = factory(compression=compression, encryption_key=key)
        written.append(submit(front, data))
    for compression, key in MODES:
        front = factory(compression=compression, encryption_key=key, old_keys=["k3y"])
        for msgid, evpids in written:
            with front.message_open(msgid) as f:
                assert f.read() == data
            assert [front.envelope_load(e).evpid for e in evpids] == evpids
    final = factory(compression=True, encryption_key="k3y")
    assert final.rewrite_all() == 12
    for msgid, _ in written:
        with final.backend.get(Kind.MESSAGE, msgid) as f:
            assert f.read(1) == b"\x01"


def test_50mb_message_is_streamed_with_bounded_memory(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    front = QueueFront(FsBackend(spool), spool=spool, compression=True, encryption_key="k",
                       kdf_n=KDF_N)
    msgid = front.message_create()
    block = b"".join(b"line %06d: " % i + os.urandom(24).hex().encode() + b"\n"
                     for i in range(16384))  # ~1 MiB, about half compressible
    size = 0
    with os.fdopen(front.message_fd(msgid), "wb") as f:
        f.write(b"Received: x\n\n")
        while size < 50 * 1024 * 1024:
            f.write(block)
            size += len(block)
    size += len(b"Received: x\n\n")
    front.envelope_create(msgid, make_env())
    tracemalloc.start()
    try:
        front.message_commit(msgid)
        fd = front.message_fd_for_delivery(msgid)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        assert os.fstat(fd).st_size == size
        assert os.pread(fd, 12, 0) == b"Received: x\n"
    finally:
        os.close(fd)
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes: not streamed"


def test_commit_failure_leaves_nothing_behind(factory: Factory,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    front = factory(compression=True)
    msgid = front.message_create()
    os.close(front.message_fd(msgid))
    for _ in range(3):
        front.envelope_create(msgid, make_env())
    real_put = front.backend.put

    def put_many(items: list[tuple[Kind, int, object]]) -> list[int]:
        # the envelopes land, then the disk fills up at the message blob
        sizes = []
        for kind, oid, data in items:
            if kind is Kind.MESSAGE:
                raise OSError(28, "No space left on device")
            sizes.append(real_put(kind, oid, data))  # type: ignore[arg-type]
        return sizes

    def fsync_dir(path: Path) -> None:
        # the directory is in the queue already when its bucket cannot be synced
        if path.parent.name == "queue":
            raise OSError(28, "No space left on device")
        real_fsync_dir(path)

    if isinstance(front.backend, FsBackend):  # commits by renaming incoming/<msgid>/
        real_fsync_dir = fs_module.fsync_dir
        monkeypatch.setattr(fs_module, "fsync_dir", fsync_dir)
    else:
        monkeypatch.setattr(front.backend, "put_many", put_many)
    with pytest.raises(OSError, match="No space"):
        front.message_commit(msgid)
    assert list(front.backend.list(Kind.ENVELOPE)) == []
    monkeypatch.undo()
    front.message_rollback(msgid)
    assert list(os.scandir(front.spool / "incoming")) == []


def test_rekey_tool_rotates_the_spool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from smtpd.queue import rekey

    spool = tmp_path / "spool"
    front = QueueFront(FsBackend(spool), spool=spool, encryption_key="old", kdf_n=KDF_N)
    msgid, _ = submit(front, b"Received: x\n\nrotate me\n")
    bad, _ = submit(front, b"Received: x\n\ntampered\n")
    _tamper(front, Kind.MESSAGE, bad)
    assert rekey.main(["--spool", str(spool), "--compression", "--encrypt"],
                      io.StringIO("new\nold\n")) == 0
    assert "3 files rewritten, 1 messages in corrupt/" in capsys.readouterr().out
    after = QueueFront(FsBackend(spool), spool=spool, compression=True, encryption_key="new")
    with after.message_open(msgid) as f:
        assert f.read() == b"Received: x\n\nrotate me\n"
    assert [m for m, _ in after.corrupted()] == [bad]
    assert "authentication failed" in dict(after.corrupted())[bad]
    assert rekey.main(["--spool", str(spool)], io.StringIO("wrong\n")) == 1
    assert "does not match" in capsys.readouterr().err


def test_decrypting_the_whole_spool_frees_it_for_a_new_key(factory: Factory) -> None:
    front = factory(encryption_key="old")
    _, evpids = submit(front, b"Received: x\n\nhi\n")
    plain = factory(old_keys=["old"])
    assert plain.rewrite_all() == 3
    assert [e.evpid for e in factory().walk()] == evpids  # no key needed any more
    with pytest.raises(WrongKey):
        factory(encryption_key="new", old_keys=["old", ""])  # empty keys still refused
    renewed = factory(encryption_key="new")  # the spool took the new key
    m2, _ = submit(renewed, b"Received: x\n\nnew\n")
    with factory(encryption_key="new").message_open(m2) as f:
        assert f.read() == b"Received: x\n\nnew\n"
    with pytest.raises(WrongKey):
        factory(encryption_key="old")


def test_readonly_offline_reader(tmp_path: Path) -> None:
    """smtpctl show message/envelope with the key: reads, never writes."""
    spool = tmp_path / "spool"
    daemon = QueueFront(FsBackend(spool), spool=spool, compression=True, encryption_key="k",
                        kdf_n=KDF_N)
    msgid, evpids = submit(daemon, b"Received: x\n\nshow me\n")
    before = sorted((p, p.stat().st_mtime_ns) for p in spool.rglob("*"))
    reader = QueueFront(FsBackend(spool, create=False), spool=spool, encryption_key="k",
                        readonly=True)
    with reader.message_open(msgid) as f:
        assert f.read() == b"Received: x\n\nshow me\n"
    assert reader.envelope_load(evpids[0]).evpid == evpids[0]
    with pytest.raises(WrongKey):
        QueueFront(FsBackend(spool, create=False), spool=spool, encryption_key="bad",
                   readonly=True)
    assert sorted((p, p.stat().st_mtime_ns) for p in spool.rglob("*")) == before
    with pytest.raises(FileNotFoundError, match="not a spool"):
        FsBackend(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()
