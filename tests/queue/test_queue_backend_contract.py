"""The contract every registered queue backend passes (smtpd/queue/backend.py)."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpd.queue.backend import BACKENDS, BlobNotFound, Kind, QueueBackend, make_backend
from smtpd.queue.blob import SpoolFile

M1, M2, M3 = 0x0A000001, 0x0A000002, 0xF0000001
E1, E2, E3 = (M1 << 32) | 1, (M1 << 32) | 0xFFFFFFFF, (M3 << 32) | 5


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> QueueBackend:
    b = make_backend(request.param, tmp_path / "spool")
    assert b.name == request.param
    return b


def read(b: QueueBackend, kind: Kind, oid: int) -> bytes:
    with b.get(kind, oid) as f:
        return f.read()


def test_put_get_replace_delete(backend: QueueBackend) -> None:
    assert backend.put(Kind.MESSAGE, M1, b"hello") == 5
    assert read(backend, Kind.MESSAGE, M1) == b"hello"
    backend.put(Kind.MESSAGE, M1, b"replaced")
    assert read(backend, Kind.MESSAGE, M1) == b"replaced"
    assert backend.delete(Kind.MESSAGE, M1) is True
    assert backend.delete(Kind.MESSAGE, M1) is False
    with pytest.raises(BlobNotFound):
        backend.get(Kind.MESSAGE, M1)


def test_kinds_are_separate_namespaces(backend: QueueBackend) -> None:
    backend.put(Kind.MESSAGE, M1, b"m")
    backend.put(Kind.CORRUPT_MESSAGE, M1, b"c")
    backend.put(Kind.CORRUPT_REASON, M1, b"r")
    backend.put(Kind.ENVELOPE, E1, b"e")
    backend.put(Kind.CORRUPT_ENVELOPE, E1, b"ce")
    backend.put(Kind.KEYCHECK, 0, b"k")
    got = {k: read(backend, k, E1 if "envelope" in k else (0 if k is Kind.KEYCHECK else M1))
           for k in Kind}
    assert got == {Kind.MESSAGE: b"m", Kind.CORRUPT_MESSAGE: b"c", Kind.CORRUPT_REASON: b"r",
                   Kind.ENVELOPE: b"e", Kind.CORRUPT_ENVELOPE: b"ce", Kind.KEYCHECK: b"k"}
    assert list(backend.list(Kind.KEYCHECK)) == [0]
    backend.delete(Kind.MESSAGE, M1)
    assert read(backend, Kind.CORRUPT_MESSAGE, M1) == b"c"


def test_missing(backend: QueueBackend) -> None:
    for kind, oid in [(Kind.MESSAGE, M2), (Kind.ENVELOPE, E3), (Kind.KEYCHECK, 0)]:
        with pytest.raises(BlobNotFound) as info:
            backend.get(kind, oid)
        assert info.value.kind is kind and info.value.oid == oid
        assert backend.delete(kind, oid) is False
        assert list(backend.list(kind)) == []


def test_streaming_sources(backend: QueueBackend) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)

    def gen() -> Iterator[bytes]:
        for i in range(0, len(big), 100_000):
            yield big[i : i + 100_000]

    assert backend.put(Kind.MESSAGE, M1, gen()) == len(big)
    assert backend.put(Kind.MESSAGE, M2, io.BytesIO(big)) == len(big)
    for m in (M1, M2):
        with backend.get(Kind.MESSAGE, m) as f:
            parts = []
            while chunk := f.read(65536):
                assert len(chunk) <= 65536
                parts.append(chunk)
        assert b"".join(parts) == big
    assert backend.put(Kind.MESSAGE, M3, b"") == 0
    assert read(backend, Kind.MESSAGE, M3) == b""


def test_put_many(backend: QueueBackend) -> None:
    sizes = backend.put_many([(Kind.ENVELOPE, E1, b"one"), (Kind.ENVELOPE, E2, iter([b"tw", b"o"])),
                              (Kind.MESSAGE, M1, io.BytesIO(b"message"))])
    assert sizes == [3, 3, 7]
    assert [read(backend, Kind.ENVELOPE, e) for e in (E1, E2)] == [b"one", b"two"]
    assert read(backend, Kind.MESSAGE, M1) == b"message"
    assert backend.put_many([]) == []


def test_put_a_spool_file(backend: QueueBackend, tmp_path: Path) -> None:
    # put_many reads a SpoolFile like any source, wherever it is (the fs
    # backend keeps one in place only in adopt_many).
    for where in (getattr(backend, "root", tmp_path) / "incoming", Path("/dev/shm")):
        if not where.is_dir():
            continue
        received = where / f"spoolfile-test-{os.getpid()}"
        received.write_bytes(b"Received: x\n\nbody\n")
        try:
            assert backend.put_many([(Kind.MESSAGE, M1, SpoolFile(received))]) == [18]
            assert read(backend, Kind.MESSAGE, M1) == b"Received: x\n\nbody\n"
        finally:
            received.unlink(missing_ok=True)


def test_delete_many(backend: QueueBackend) -> None:
    backend.put_many([(Kind.ENVELOPE, E1, b"1"), (Kind.ENVELOPE, E2, b"2"),
                      (Kind.MESSAGE, M1, b"m"), (Kind.MESSAGE, M2, b"n")])
    # a message's last envelope and the message itself go in one batch;
    # a missing blob is reported, not raised
    assert backend.delete_many([(Kind.ENVELOPE, E1), (Kind.ENVELOPE, E2),
                                (Kind.MESSAGE, M1), (Kind.ENVELOPE, E1)]) == [
        True, True, True, False]
    assert list(backend.list(Kind.ENVELOPE)) == []
    assert list(backend.list(Kind.MESSAGE)) == [M2]
    with pytest.raises(BlobNotFound):
        backend.get(Kind.MESSAGE, M1)
    assert backend.delete_many([]) == []


def test_failed_put_keeps_old_blob(backend: QueueBackend) -> None:
    backend.put(Kind.MESSAGE, M1, b"old")

    def failing() -> Iterator[bytes]:
        yield b"new partial"
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        backend.put(Kind.MESSAGE, M1, failing())
    assert read(backend, Kind.MESSAGE, M1) == b"old"
    with pytest.raises(RuntimeError):
        backend.put_many([(Kind.MESSAGE, M1, b"new"), (Kind.MESSAGE, M2, failing())])
    assert read(backend, Kind.MESSAGE, M1) in (b"old", b"new")


def test_list_sorted_with_cursor(backend: QueueBackend) -> None:
    for e in (E3, E2, E1):
        backend.put(Kind.ENVELOPE, e, b"x")
    for m in (M3, M1, M2):
        backend.put(Kind.MESSAGE, m, b"x")
    assert list(backend.list(Kind.ENVELOPE)) == [E1, E2, E3]
    assert list(backend.list(Kind.ENVELOPE, after=E1)) == [E2, E3]
    assert list(backend.list(Kind.ENVELOPE, after=E2)) == [E3]
    assert list(backend.list(Kind.ENVELOPE, after=M1 << 32)) == [E1, E2, E3]
    assert list(backend.list(Kind.MESSAGE)) == [M1, M2, M3]
    assert list(backend.list(Kind.MESSAGE, after=M1)) == [M2, M3]
    assert list(backend.list(Kind.MESSAGE, after=M3)) == []
    # ``below``: one message's envelopes, and ranges.
    assert list(backend.list(Kind.ENVELOPE, after=M1 << 32, below=(M1 + 1) << 32)) == [E1, E2]
    assert list(backend.list(Kind.ENVELOPE, after=M2 << 32, below=(M2 + 1) << 32)) == []
    assert list(backend.list(Kind.ENVELOPE, below=E2)) == [E1]
    assert list(backend.list(Kind.ENVELOPE, after=E1, below=E3 + 1)) == [E2, E3]
    assert list(backend.list(Kind.MESSAGE, after=M1 - 1, below=M1 + 1)) == [M1]
    assert list(backend.list(Kind.MESSAGE, below=M3)) == [M1, M2]
    assert list(backend.list(Kind.MESSAGE, after=M1, below=M1)) == []
    for e in (E1, E3):
        backend.put(Kind.CORRUPT_ENVELOPE, e, b"x")
    assert list(backend.list(Kind.CORRUPT_ENVELOPE, after=M3 << 32)) == [E3]
    assert list(backend.list(Kind.CORRUPT_ENVELOPE, below=E3)) == [E1]


def test_list_tolerates_changes(backend: QueueBackend) -> None:
    ids = [(m << 32) | low for m in (M1, M2, M3) for low in (1, 2, 3)]
    for e in ids:
        backend.put(Kind.ENVELOPE, e, b"x")
    seen = []
    for e in backend.list(Kind.ENVELOPE):
        seen.append(e)
        backend.delete(Kind.ENVELOPE, e)  # delete what we just saw
        backend.put(Kind.ENVELOPE, (M1 << 32) | 0x100 + len(seen), b"y")  # behind the cursor
    assert seen == sorted(set(seen))
    assert set(ids) <= set(seen)


def test_fs_one_message_listing_reads_one_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """envelope_delete asks for one message's envelopes on every delivery: with
    a million messages queued that must not list a bucket of thousands."""
    from smtpd.queue import fs

    backend = fs.FsBackend(tmp_path / "spool")
    for m in range(M1, M1 + 50):
        backend.put(Kind.ENVELOPE, (m << 32) | 1, b"x")
    listed: list[Path] = []
    real = fs._sorted_names

    def spy(path: Path, pattern: re.Pattern[str]) -> list[str]:
        listed.append(path)
        return real(path, pattern)

    monkeypatch.setattr(fs, "_sorted_names", spy)
    m = M1 + 7
    assert list(backend.list(Kind.ENVELOPE, after=m << 32, below=(m + 1) << 32)) == [
        (m << 32) | 1]
    assert listed == [backend.path(Kind.ENVELOPE, (m << 32) | 1).parent]
