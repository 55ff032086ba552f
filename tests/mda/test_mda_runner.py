from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from mdatest_util import req_factory

import smtpd.mda
from imsg import codec
from smtpd.config.model import Action, ActionKind, Config, RelayOptions
from smtpd.mda import runner, worker
from smtpd.mda.runner import FAILED, TIMED_OUT, DeliveryRunner, build_request
from smtpd.mda.types import DeliveryMethod, DeliveryRequest, DeliveryResult, DeliveryStatus, ok
from smtpd.queue.envelope import DeliveryType, Envelope, dump_envelope

MSG = b"Subject: x\n\nbody\n"
Result = tuple[int, str, str, str]


def _msgfd(tmp_path: Path, data: bytes = MSG) -> int:
    p = tmp_path / "spool-message"
    p.write_bytes(data)
    return os.open(p, os.O_RDONLY)


def _run(start: Callable[[DeliveryRunner], None], count: int, *, max_concurrent: int = 4,
         timeout: float = 10.0, sigchld: bool = False,
         check: Callable[[DeliveryRunner], None] | None = None) -> list[Result]:
    """Start deliveries from inside a loop and wait for `count` results."""
    loop = asyncio.new_event_loop()
    results: list[Result] = []
    done: asyncio.Future[None] = loop.create_future()

    def on_result(evpid: int, status: str, text: str, detail: str) -> None:
        results.append((evpid, status, text, detail))
        if len(results) == count and not done.done():
            done.set_result(None)

    delivery = DeliveryRunner(loop, on_result, max_concurrent=max_concurrent, timeout=timeout)
    if sigchld:
        loop.add_signal_handler(signal.SIGCHLD, delivery.reap)

    def go() -> None:
        start(delivery)
        if check is not None:
            check(delivery)

    try:
        loop.call_soon(go)
        loop.run_until_complete(asyncio.wait_for(done, 15))
        assert delivery.running == 0 and delivery.waiting == 0
    finally:
        delivery.close()
        if sigchld:
            loop.remove_signal_handler(signal.SIGCHLD)
        loop.close()
    return results


def test_maildir_delivery_in_a_forked_child(tmp_path: Path) -> None:
    req = req_factory(tmp_path)()
    fd = _msgfd(tmp_path)
    [(evpid, status, text, detail)] = _run(lambda r: r.start(req, fd), 1)
    assert (evpid, status, text) == (req.evpid, "ok", "250 2.0.0 Delivered")
    delivered = tmp_path / "Maildir" / "new" / detail
    assert delivered.read_bytes() == (
        b"Return-Path: <a@b.test>\nDelivered-To: acc1+tag@acc.test\n" + MSG)
    with pytest.raises(OSError):
        os.fstat(fd)  # the parent closed its copy after the fork


def test_expected_name_is_used_and_redelivery_is_not_duplicated(tmp_path: Path) -> None:
    req = req_factory(tmp_path)()
    for _ in range(2):
        fd = _msgfd(tmp_path)

        def start(r: DeliveryRunner, fd: int = fd) -> None:
            r.start(req, fd, "1.cafe.vm.test")

        [(_, status, _, detail)] = _run(start, 1)
        assert (status, detail) == ("ok", "1.cafe.vm.test")
    assert [p.name for p in (tmp_path / "Maildir" / "new").iterdir()] == ["1.cafe.vm.test"]


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("dropping to another user needs root")
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this machine has no user 'nobody'")
    # tmp_path lives under a 0700 root directory: nobody could not reach it.
    base = Path(tempfile.mkdtemp(prefix="mda-parent-runner-", dir="/tmp"))
    try:
        base.chmod(0o755)
        home = base / "home"
        home.mkdir()
        os.chown(home, pw.pw_uid, pw.pw_gid)
        yield home
    finally:
        shutil.rmtree(base)


def test_drops_to_the_recipient_as_root(tmp_path: Path, nobody_home: Path) -> None:
    pw = pwd.getpwnam("nobody")
    req = req_factory(tmp_path)(user="nobody", uid=pw.pw_uid, gid=pw.pw_gid,
                                home=str(nobody_home), maildir="~/Maildir")
    root_only = nobody_home.parent / "root-only"
    root_only.mkdir(mode=0o700)
    fds = [_msgfd(tmp_path), _msgfd(tmp_path)]

    def start(r: DeliveryRunner) -> None:
        r.start(req, fds[0])
        r.start(replace(req, evpid=req.evpid + 1, maildir=str(root_only / "Maildir")), fds[1])

    results = {evpid: (status, text, detail) for evpid, status, text, detail in _run(start, 2)}
    status, _, name = results[req.evpid]
    assert status == "ok"
    st = (nobody_home / "Maildir" / "new" / name).stat()
    assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid)
    # and root's powers are really gone: a root-only directory is refused
    status, text, _ = results[req.evpid + 1]
    assert status == "tempfail" and "Permission denied" in text


def test_timeout_kills_a_slow_mda_command_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = tmp_path / "slow"
    script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    script.chmod(0o755)
    req = req_factory(tmp_path)(method=DeliveryMethod.MDA, command=str(script), timeout=30.0)
    fd = _msgfd(tmp_path)
    t0 = time.monotonic()
    try:
        [(_, status, text, _)] = _run(lambda r: r.start(req, fd), 1, timeout=0.5)
        assert time.monotonic() - t0 < 5
        assert (status, text) == ("tempfail", TIMED_OUT)
        pid = int(pidfile.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # command.py killed the mda's group on the way out
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_a_child_ignoring_sigterm_is_killed(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def stubborn(req: Any, source: Any, expected: Any = None,
                 check_existing: bool = True) -> DeliveryResult:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(30)
        return ok()

    monkeypatch.setattr(smtpd.mda, "deliver", stubborn)
    monkeypatch.setattr(runner, "KILL_GRACE", 0.2)
    fd = _msgfd(tmp_path)
    t0 = time.monotonic()
    [(_, status, text, detail)] = _run(lambda r: r.start(req_factory(tmp_path)(), fd), 1,
                                       timeout=0.3)
    assert time.monotonic() - t0 < 5
    assert (status, text) == ("tempfail", TIMED_OUT)
    assert "SIGKILL" in detail


@pytest.mark.parametrize(("how", "expected"), [
    ("exit", "exited with status 3"),
    ("segv", "killed by signal SIGSEGV"),
])
def test_a_child_that_dies_without_result_is_tempfail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, expected: str) -> None:
    def die(req: Any, source: Any, expected: Any = None,
            check_existing: bool = True) -> DeliveryResult:
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(5)
        return ok()

    monkeypatch.setattr(smtpd.mda, "deliver", die)
    fd = _msgfd(tmp_path)
    [(_, status, text, detail)] = _run(lambda r: r.start(req_factory(tmp_path)(), fd), 1)
    assert (status, text) == ("tempfail", FAILED)
    assert expected in detail


def test_an_exception_never_reaches_the_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    def boom(req: Any, source: Any, expected: Any = None,
             check_existing: bool = True) -> DeliveryResult:
        raise RuntimeError("kaboom /secret/path")

    monkeypatch.setattr(smtpd.mda, "deliver", boom)
    fd = _msgfd(tmp_path)
    [(_, status, text, detail)] = _run(lambda r: r.start(req_factory(tmp_path)(), fd), 1)
    assert (status, text, detail) == ("tempfail", FAILED, "")
    assert "kaboom" in capfd.readouterr().err  # logged on stderr instead


def test_child_sees_no_parent_descriptors(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    leaked = os.pipe()

    def list_fds(req: Any, source: Any, expected: Any = None,
                 check_existing: bool = True) -> DeliveryResult:
        return ok(detail=",".join(sorted(os.listdir("/proc/self/fd"))))

    monkeypatch.setattr(smtpd.mda, "deliver", list_fds)
    fd = _msgfd(tmp_path)
    try:
        [(_, status, _, detail)] = _run(lambda r: r.start(req_factory(tmp_path)(), fd), 1)
    finally:
        for f in leaked:
            os.close(f)
    assert status == "ok"
    fds = {int(x) for x in detail.split(",")}
    assert not fds & set(leaked)
    assert len(fds) <= 6  # 0 1 2, the message, the result pipe, listdir's own


def test_concurrency_limit_queues_the_rest(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "log"

    def slow(req: DeliveryRequest, source: Any, expected: Any = None,
             check_existing: bool = True) -> DeliveryResult:
        with open(log, "a") as f:
            f.write(f"+{req.evpid}\n")
        time.sleep(0.15)
        with open(log, "a") as f:
            f.write(f"-{req.evpid}\n")
        return ok()

    monkeypatch.setattr(smtpd.mda, "deliver", slow)
    make = req_factory(tmp_path)

    def start(r: DeliveryRunner) -> None:
        for i in range(5):
            r.start(make(evpid=i + 1), _msgfd(tmp_path))

    def check(r: DeliveryRunner) -> None:
        assert (r.running, r.waiting) == (2, 3)

    results = _run(start, 5, max_concurrent=2, sigchld=True, check=check)
    assert sorted(e for e, *_ in results) == [1, 2, 3, 4, 5]
    assert {s for _, s, *_ in results} == {"ok"}
    depth = peak = 0
    for line in log.read_text().split():
        depth += 1 if line.startswith("+") else -1
        peak = max(peak, depth)
    assert peak == 2


def _pid_of_worker(req: Any, source: Any, expected: Any = None,
                   check_existing: bool = True) -> DeliveryResult:
    return ok(detail=str(os.getpid()))


def test_a_worker_serves_its_user_again_until_idle(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtpd.mda, "deliver", _pid_of_worker)
    monkeypatch.setattr(runner, "IDLE_SECONDS", 0.3)
    make = req_factory(tmp_path)
    loop = asyncio.new_event_loop()
    pids: list[str] = []

    def on_result(evpid: int, status: str, text: str, detail: str) -> None:
        pids.append(detail)
        if evpid < 3:  # one after the other: the idle worker takes the next
            loop.call_soon(lambda: r.start(make(evpid=evpid + 1), _msgfd(tmp_path)))

    r = DeliveryRunner(loop, on_result, max_concurrent=4, timeout=10)
    deadline = time.monotonic() + 10

    def run_until(done: Callable[[], bool]) -> None:
        while not done() and time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.01))

    try:
        loop.call_soon(lambda: r.start(make(evpid=1), _msgfd(tmp_path)))
        run_until(lambda: len(pids) == 3)
        assert len(set(pids)) == 1, pids  # one worker, three deliveries
        worker_pid = int(pids[0])
        assert r.pids() == [worker_pid] and r.running == 0
        # idle for IDLE_SECONDS: retired, it exits and is reaped
        run_until(lambda: not r.pids())
        assert r.pids() == []
        with pytest.raises(ChildProcessError):
            os.waitpid(worker_pid, os.WNOHANG)
    finally:
        r.close()
        loop.close()


def test_a_worker_is_replaced_after_max_deliveries_and_after_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def pid_or_fail(req: Any, source: Any, expected: Any = None,
                    check_existing: bool = True) -> DeliveryResult:
        if req.evpid == 3:
            raise RuntimeError("a bug in delivery")
        return ok(detail=str(os.getpid()))

    monkeypatch.setattr(smtpd.mda, "deliver", pid_or_fail)
    monkeypatch.setattr(runner, "MAX_DELIVERIES", 2)
    make = req_factory(tmp_path)
    results: list[Result] = []

    def start(r: DeliveryRunner) -> None:
        original = r.on_result

        def chain(evpid: int, status: str, text: str, detail: str) -> None:
            original(evpid, status, text, detail)
            if evpid < 5:
                r.loop.call_soon(lambda: r.start(make(evpid=evpid + 1), _msgfd(tmp_path)))
        r.on_result = chain
        r.start(make(evpid=1), _msgfd(tmp_path))

    results = _run(start, 5)
    by = {evpid: (status, detail) for evpid, status, _, detail in results}
    assert by[1][1] == by[2][1]  # the same worker twice,
    assert by[3] == ("tempfail", "")  # then a new one, which fails and is not reused,
    assert len({by[1][1], by[4][1]}) == 2 and by[4][1] == by[5][1]  # then a third


def test_a_full_runner_retires_an_idle_worker_of_another_user(
        tmp_path: Path, nobody_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtpd.mda, "deliver", _pid_of_worker)
    pw = pwd.getpwnam("nobody")
    make = req_factory(tmp_path)
    as_nobody = make(user="nobody", uid=pw.pw_uid, gid=pw.pw_gid, home=str(nobody_home))

    def start(r: DeliveryRunner) -> None:
        original = r.on_result

        def chain(evpid: int, status: str, text: str, detail: str) -> None:
            original(evpid, status, text, detail)
            if evpid == 1:  # nobody's worker is idle now, and the only slot
                r.loop.call_soon(lambda: r.start(make(evpid=2), _msgfd(tmp_path)))
        r.on_result = chain
        r.start(replace(as_nobody, evpid=1), _msgfd(tmp_path))

    results = _run(start, 2, max_concurrent=1, sigchld=True)
    assert [(e, s) for e, s, _, _ in results] == [(1, "ok"), (2, "ok")]
    assert results[0][3] != results[1][3]


def test_worker_requests_round_trip() -> None:
    req = req_factory(Path("/h"))(wrapper="w", lmtp_rcpt_to=True, timeout=2.5)
    assert worker.decode_request(worker.encode_request(req, "1.x.h")) == (req, "1.x.h", True)
    assert worker.decode_request(worker.encode_request(req, None, False)) == (req, None, False)
    for bad in (codec.pack([1, None, True]), codec.pack([[1, 2], None, True]),
                codec.pack("x"), codec.pack([list(astuple(req)), None, "yes"])):
        with pytest.raises(ValueError):
            worker.decode_request(bad)


def test_result_decoding_refuses_garbage() -> None:
    decode = runner._decode_result
    assert decode(codec.pack(["ok", "250 2.0.0 Delivered", "n", True])) == (
        "ok", "250 2.0.0 Delivered", "n", True)
    assert decode(codec.pack(["tempfail", "451 x\r\nInjected: y", "", False]))[1] == (
        "451 x??Injected: y")
    for bad in (b"", b"\xc1", codec.pack(["maybe", "x", "", True]),
                codec.pack(["ok", "", "", True]), codec.pack(["ok", 1, "", True]),
                codec.pack({"status": "ok"}), codec.pack(["ok", "x", "y"]),
                codec.pack(["ok", "x", "y", "z"]), codec.pack(["ok", "x", "y", True, 1])):
        assert decode(bad) == ("", "", "", False)


# -- build_request ------------------------------------------------------------------

def _config(**actions: Action) -> Config:
    return Config(path="smtpd.conf", hostname="vm.test", actions=MappingProxyType(actions),
                  mda_wrappers=MappingProxyType({"wrap": "/usr/bin/env %{mda}"}))


LOCAL = Action("local", ActionKind.MAILDIR, "smtpd.conf:3", maildir_path="~/Mail", junk=True)
ME = pwd.getpwuid(os.getuid())


def _envelope(**kw: Any) -> str:
    fields: dict[str, Any] = dict(
        evpid=0x51E7B46600000001, type=DeliveryType.MDA, dispatcher="local",
        sender="a@b.test", rcpt="acc1+tag@acc.test", dest="acc1@acc.test",
        ctime=1_800_000_000, ttl=86400, mda_user=ME.pw_name, mda_subaddress="tag")
    fields.update(kw)
    return dump_envelope(Envelope(**fields)).decode()


def test_build_request_from_a_valid_envelope() -> None:
    req = build_request(_envelope(), _config(local=LOCAL), "mx.test")
    assert isinstance(req, DeliveryRequest)
    assert (req.evpid, req.sender, req.rcpt, req.orig_rcpt) == (
        0x51E7B46600000001, "a@b.test", "acc1@acc.test", "acc1+tag@acc.test")
    assert (req.method, req.maildir, req.junk, req.hostname) == (
        DeliveryMethod.MAILDIR, "~/Mail", True, "mx.test")
    assert (req.user, req.uid, req.gid, req.home) == (ME.pw_name, ME.pw_uid, ME.pw_gid,
                                                      ME.pw_dir)
    assert (req.subaddress, req.subaddress_delim) == ("tag", "+")


def test_build_request_mda_command_and_wrapper() -> None:
    mda = Action("m", ActionKind.MDA, "c:1", mda_command="/usr/bin/procmail", wrapper="wrap")
    req = build_request(_envelope(dispatcher="m"), _config(m=mda), "mx.test")
    assert isinstance(req, DeliveryRequest)
    assert (req.method, req.command, req.wrapper) == (
        DeliveryMethod.MDA, "/usr/bin/procmail", "/usr/bin/env %{mda}")
    # a |command from a .forward file wins over the action's method (never as root)
    user = ME.pw_name if os.geteuid() else "nobody"
    try:
        pwd.getpwnam(user)
    except KeyError:
        pytest.skip("this machine has no user 'nobody'")
    req = build_request(_envelope(mda_exec="/bin/cat", mda_user=user), _config(local=LOCAL),
                        "mx.test")
    assert isinstance(req, DeliveryRequest)
    assert (req.method, req.command) == (DeliveryMethod.MDA, "/bin/cat")


@pytest.mark.parametrize(("changes", "status", "words"), [
    ({"sender": "a\r\nRCPT TO:<x@y>@b.test"}, DeliveryStatus.PERMFAIL, "sender"),
    ({"dest": "acc1@acc.test\n"}, DeliveryStatus.PERMFAIL, "dest"),
    ({"dest": "x\0@acc.test"}, DeliveryStatus.PERMFAIL, "dest"),
    ({"dest": "acc1"}, DeliveryStatus.PERMFAIL, "dest"),
    ({"rcpt": "a;rm -rf /@x"}, DeliveryStatus.PERMFAIL, "rcpt"),
    ({"orig_rcpt": "<a@b>"}, DeliveryStatus.PERMFAIL, "orig-rcpt"),
    ({"type": DeliveryType.MTA}, DeliveryStatus.PERMFAIL, "not a local delivery"),
    ({"dispatcher": "gone"}, DeliveryStatus.TEMPFAIL, "No action named 'gone'"),
    ({"dispatcher": "out"}, DeliveryStatus.PERMFAIL, "does not deliver locally"),
    ({"mda_user": ""}, DeliveryStatus.PERMFAIL, "user"),
    ({"mda_user": "-rf"}, DeliveryStatus.PERMFAIL, "user"),
])
def test_build_request_refuses(changes: dict[str, Any], status: DeliveryStatus,
                               words: str) -> None:
    config = _config(local=LOCAL, out=Action("out", ActionKind.RELAY, "c:2",
                                             relay=RelayOptions()))
    res = build_request(_envelope(**changes), config, "mx.test")
    assert isinstance(res, DeliveryResult), res
    assert res.status is status and words in res.text, res


def test_build_request_refuses_a_malformed_envelope() -> None:
    text = _envelope().replace("dest: acc1@acc.test\n", "dest: acc1@acc.test\ndest: x@y\n")
    res = build_request(text, _config(local=LOCAL), "mx.test")
    assert isinstance(res, DeliveryResult) and res.status is DeliveryStatus.PERMFAIL
    assert "Malformed envelope" in res.text


@pytest.mark.skipif(os.geteuid() != 0, reason="user lookup is only enforced as root")
def test_build_request_as_root_needs_an_existing_user() -> None:
    res = build_request(_envelope(mda_user="no-such-user-xyz"), _config(local=LOCAL), "mx")
    assert isinstance(res, DeliveryResult) and res.status is DeliveryStatus.PERMFAIL
    assert "user lookup" in res.text
    res = build_request(_envelope(mda_user="root", mda_exec="/bin/sh"),
                        _config(local=LOCAL), "mx")
    assert isinstance(res, DeliveryResult) and res.status is DeliveryStatus.PERMFAIL


def test_start_envelope_delivers_under_the_recorded_name(tmp_path: Path) -> None:
    action = Action("local", ActionKind.MAILDIR, "c:1", maildir_path=str(tmp_path / "M"))
    text = _envelope(mda_delivered="1.feed.vm.test")
    fd = _msgfd(tmp_path)
    [(evpid, status, _, detail)] = _run(
        lambda r: r.start_envelope(text, fd, _config(local=action), "mx.test"), 1)
    assert (evpid, status, detail) == (0x51E7B46600000001, "ok", "1.feed.vm.test")
    assert (tmp_path / "M" / "new" / "1.feed.vm.test").read_bytes().endswith(MSG)


def test_a_first_attempt_reaches_the_maildir_without_the_look(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def record(req: Any, source: Any, expected: Any = None,
               check_existing: bool = True) -> DeliveryResult:
        # runs in the worker: what it was asked travels back in the detail
        return ok(detail=f"{expected} {check_existing}")

    monkeypatch.setattr(smtpd.mda, "deliver", record)
    action = Action("local", ActionKind.MAILDIR, "c:1", maildir_path=str(tmp_path / "M"))
    text = _envelope(mda_delivered="1.feed.vm.test")

    def start(r: DeliveryRunner) -> None:
        r.start_envelope(text, _msgfd(tmp_path), _config(local=action), "mx", True)
        r.start_envelope(text, _msgfd(tmp_path), _config(local=action), "mx")

    results = _run(start, 2)
    assert sorted(detail for *_, detail in results) == ["1.feed.vm.test False",
                                                        "1.feed.vm.test True"]


def test_start_envelope_reports_a_refused_envelope(tmp_path: Path) -> None:
    fd = _msgfd(tmp_path)
    [(evpid, status, text, _)] = _run(
        lambda r: r.start_envelope(_envelope(dest="nope"), fd, _config(local=LOCAL), "mx"), 1)
    assert (evpid, status) == (0x51E7B46600000001, "permfail") and "dest" in text
    with pytest.raises(OSError):
        os.fstat(fd)
