from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mdatest_util import req_factory

import smtpd.mda
from smtpd.mda import runner
from smtpd.mda.runner import decode_result, encode_result, run_delivery, run_delivery_sync
from smtpd.mda.types import DeliveryMethod, DeliveryResult, DeliveryStatus, ok, tempfail

MSG = b"Subject: x\n\nbody\n"


def _msgfd(tmp_path: Path, data: bytes = MSG) -> int:
    p = tmp_path / "spool-message"
    p.write_bytes(data)
    return os.open(p, os.O_RDONLY)


def test_sync_maildir(tmp_path: Path) -> None:
    fd = _msgfd(tmp_path)
    try:
        res = run_delivery_sync(req_factory(tmp_path)(), fd, "1.deadbeef.vm.test")
    finally:
        os.close(fd)
    assert res.status is DeliveryStatus.OK, res
    assert res.detail == "1.deadbeef.vm.test"
    assert (tmp_path / "Maildir" / "new" / "1.deadbeef.vm.test").read_bytes().endswith(MSG)


def test_async_from_a_loop(tmp_path: Path) -> None:
    fd = _msgfd(tmp_path)

    async def main() -> list[DeliveryResult]:
        make = req_factory(tmp_path)
        reqs = [make(maildir=str(tmp_path / f"M{i}")) for i in range(5)]
        # forked children share an fd's file offset: one descriptor each
        fds = [os.open(tmp_path / "spool-message", os.O_RDONLY) for _ in reqs]
        try:
            return list(
                await asyncio.gather(*(run_delivery(r, f) for r, f in zip(reqs, fds, strict=True)))
            )
        finally:
            for f in fds:
                os.close(f)

    try:
        results = asyncio.run(main())
    finally:
        os.close(fd)
    assert [r.status for r in results] == [DeliveryStatus.OK] * 5
    for i in range(5):
        assert len(list((tmp_path / f"M{i}" / "new").iterdir())) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
def test_drops_to_the_recipient(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="mda-runner-", dir="/tmp"))  # traversable by nobody
    try:
        base.chmod(0o755)
        home = base / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        make = req_factory(tmp_path)
        req = make(user="nobody", uid=65534, gid=65534, home=str(home), maildir="~/Maildir")
        fd = _msgfd(tmp_path)
        try:
            res = run_delivery_sync(req, fd)
            assert res.status is DeliveryStatus.OK, res
            f = next((home / "Maildir" / "new").iterdir())
            assert (f.stat().st_uid, f.stat().st_gid) == (65534, 65534)
            # and it really is no longer root: a root-only directory is refused
            locked = base / "rootonly"
            locked.mkdir(mode=0o700)
            res = run_delivery_sync(replace(req, maildir=str(locked / "Maildir")), fd)
            assert res.status is DeliveryStatus.TEMPFAIL
            assert "Permission denied" in res.text
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(base)


def test_child_sees_no_parent_descriptors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    leaked_r, leaked_w = os.pipe()

    def fake(req: Any, source: Any, expected: Any = None) -> DeliveryResult:
        return ok(detail=",".join(sorted(os.listdir("/proc/self/fd"))))

    monkeypatch.setattr(smtpd.mda, "deliver", fake)
    fd = _msgfd(tmp_path)
    try:
        res = run_delivery_sync(req_factory(tmp_path)(), fd)
    finally:
        for f in (fd, leaked_r, leaked_w):
            os.close(f)
    assert res.detail is not None
    fds = {int(x) for x in res.detail.split(",")}
    assert leaked_r not in fds and leaked_w not in fds
    assert len(fds) <= 6  # 0 1 2, the message, the result pipe, listdir's own


def test_child_dying_without_result_is_tempfail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def die(req: Any, source: Any, expected: Any = None) -> DeliveryResult:
        os._exit(3)

    monkeypatch.setattr(smtpd.mda, "deliver", die)
    fd = _msgfd(tmp_path)
    try:
        res = run_delivery_sync(req_factory(tmp_path)(), fd)
    finally:
        os.close(fd)
    assert res.status is DeliveryStatus.TEMPFAIL
    assert "status 3" in res.text


def test_exception_in_child_is_tempfail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(req: Any, source: Any, expected: Any = None) -> DeliveryResult:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(smtpd.mda, "deliver", boom)
    fd = _msgfd(tmp_path)
    try:
        res = asyncio.run(run_delivery(req_factory(tmp_path)(), fd))
    finally:
        os.close(fd)
    assert res.status is DeliveryStatus.TEMPFAIL
    assert "kaboom" in res.text


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_hung_child_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    def hang(req: Any, source: Any, expected: Any = None) -> DeliveryResult:
        time.sleep(60)
        return ok()

    monkeypatch.setattr(smtpd.mda, "deliver", hang)
    monkeypatch.setattr(runner, "GRACE", 0.2)
    fd = _msgfd(tmp_path)
    t0 = time.monotonic()
    try:
        req = req_factory(tmp_path)(timeout=0.2)
        sync = mode == "sync"
        res = run_delivery_sync(req, fd) if sync else asyncio.run(run_delivery(req, fd))
    finally:
        os.close(fd)
    assert time.monotonic() - t0 < 5
    assert res.status is DeliveryStatus.TEMPFAIL and "timed out" in res.text


def test_result_codec() -> None:
    for r in (
        ok(detail="n"),
        tempfail("451 4.3.0 x"),
        DeliveryResult(DeliveryStatus.PERMFAIL, "550 y"),
    ):
        assert decode_result(encode_result(r)) == r
    for bad in (b"", b"{}", b'{"status": "maybe", "text": "", "detail": null}', b"\xff",
                b'{"status": "ok", "text": 1, "detail": null}'):  # fmt: skip
        assert decode_result(bad).status is DeliveryStatus.TEMPFAIL


def test_mbox_method_through_runner(tmp_path: Path) -> None:
    fd = _msgfd(tmp_path)
    try:
        res = run_delivery_sync(req_factory(tmp_path)(method=DeliveryMethod.MBOX), fd)
    finally:
        os.close(fd)
    assert res.status is DeliveryStatus.OK, res
    assert (tmp_path / "mbox").read_bytes().startswith(b"From a@b.test ")
