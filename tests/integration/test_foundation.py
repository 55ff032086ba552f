"""The process architecture through the real daemon: processes, supervision,
the start-up race, control permissions, tracing and profiling."""

from __future__ import annotations

import os
import pwd
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpd.msg import CHILDREN
from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon, group_alive

TITLES = {f"smtpd: {name}" for name in ("parent", *CHILDREN)}


def test_six_processes_with_titles(daemon: Daemon) -> None:
    pids = daemon.pids()
    assert set(pids) >= TITLES, pids


def test_show_stats_has_uptime_and_imsg_counts(daemon: Daemon) -> None:
    time.sleep(1.2)  # imsg counters are sampled once a second
    stats = daemon.stats()
    assert int(stats["uptime"]) >= 0
    assert stats["uptime.human"].startswith("0d0h0m")
    assert int(stats["imsg.queue.scheduler.frames_in"]) >= 1
    assert int(stats["imsg.smtp.queue.bytes_out"]) > 0
    assert stats["control.session"] == "1"


@pytest.mark.parametrize("child", [str(c) for c in CHILDREN])
def test_kill_any_child_stops_everything(workdir: Path, child: str) -> None:
    d = Daemon(workdir, basic_config(workdir)).start()
    try:
        assert d.proc is not None
        victim = d.pids()[f"smtpd: {child}"]
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        status = d.proc.wait(timeout=5)
        elapsed = time.monotonic() - t0
        assert status != 0
        assert elapsed < 2.0, elapsed
        d.wait_for(rf"{child} process \(pid {victim}\) killed by signal SIGKILL")
        deadline = time.monotonic() + 2
        while group_alive(d.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_alive(d.proc.pid) == []
    finally:
        d.kill_group()


def test_sigterm_is_an_orderly_stop(daemon: Daemon) -> None:
    assert daemon.stop(signal.SIGTERM) == 0
    assert "info: exiting" in daemon.log_text()


def test_smtpctl_stop(daemon: Daemon) -> None:
    out = daemon.smtpctl("stop")
    assert out.returncode == 0
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=10) == 0


def test_startup_race_delayed_queue(workdir: Path) -> None:
    """Queue starts 2 s late: others are live, control takes commands and pushes
    switches to the late process, an SMTP client waits; nothing is lost."""
    d = Daemon(workdir, basic_config(workdir),
               env={"PYSMTPD_TEST_START_DELAY": "queue=2"})
    d.start(wait_ready=False)
    try:
        d.wait_for(r"listening on", 10)
        # control is live without the queue: it answers and broadcasts
        deadline = time.monotonic() + 10
        while not d.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(20):
            out = d.smtpctl("show", "stats")
            if out.returncode == 0:
                break
            time.sleep(0.1)
        assert out.returncode == 0, out.stderr
        assert d.smtpctl("trace", "imsg").returncode == 0
        # an SMTP client connecting now is queued by the kernel, served later
        with socket.create_connection(("127.0.0.1", d.port), timeout=15) as conn:
            d.wait_for("all processes ready", 15)
            banner = conn.recv(512)
        assert banner.startswith((b"220", b"421"))
        # the switch sent while the queue was not yet reading reached it
        d.wait_for(r"imsg: queue (<-|->) ", 10)
        assert d.proc is not None and d.proc.poll() is None
        assert "Traceback" not in d.log_text()
    finally:
        d.kill_group()


def _nobody() -> int:
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run smtpctl as another uid")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_control_refuses_changes_from_other_uids(daemon: Daemon) -> None:
    uid = _nobody()
    status, out, err = daemon.smtpctl_as(uid, "show", "stats")
    assert status == 0, err
    assert "uptime=" in out
    status, out, err = daemon.smtpctl_as(uid, "log", "verbose")
    assert status == 1
    assert "permission denied" in err
    assert daemon.smtpctl_as(uid, "stop")[0] == 1
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_profiling_stats_appear(daemon: Daemon) -> None:
    assert daemon.smtpctl("profile", "imsg").stdout.strip() == "command succeeded"
    # traffic: an SMTP session and a few control round trips
    for _ in range(3):
        daemon.smtpctl("show", "stats")
        try:
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=5) as s:
                s.noop()
        except smtplib.SMTPException:
            pass
    time.sleep(1.5)
    stats = daemon.stats()
    keys = [k for k in stats if k.startswith("profiling.imsg.")]
    assert keys, sorted(stats)
    count_keys = [k for k in keys if k.endswith(".count")]
    assert all(int(stats[k]) >= 1 for k in count_keys)
    assert daemon.smtpctl("unprofile", "imsg").returncode == 0


def test_trace_imsg_at_runtime(daemon: Daemon) -> None:
    assert daemon.smtpctl("trace", "imsg").returncode == 0
    daemon.smtpctl("show", "stats")
    daemon.wait_for(r"imsg: \w+ (->|<-) control: ANY_STAT_UPDATE", 5)
    assert daemon.smtpctl("untrace", "imsg").returncode == 0


def test_unknown_command_prints_grammar(daemon: Daemon) -> None:
    out = daemon.smtpctl("frobnicate", "now")
    assert out.returncode == 1
    assert "invalid command: frobnicate now" in out.stderr
    assert "show stats" in out.stderr and "trace <subsystem>" in out.stderr


def test_show_status_and_log(daemon: Daemon) -> None:
    out = daemon.smtpctl("show", "status")
    assert out.stdout.splitlines() == ["MDA running", "MTA running", "SMTP running"]
    assert daemon.smtpctl("log", "verbose").returncode == 0
    assert daemon.smtpctl("log", "brief").returncode == 0


def test_smtpctl_against_no_daemon(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "smtpctl", "-s", str(tmp_path / "none.sock"),
                          "show", "stats"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    assert "No such file or directory" in out.stderr


def test_bad_config_names_file_and_line(workdir: Path) -> None:
    conf = workdir / "bad.conf"
    conf.write_text("listen on 127.0.0.1\nfrobnicate yes\n")
    out = subprocess.run([sys.executable, "-m", "smtpd", "-d", "-f", str(conf)],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    assert f"{conf}:2:" in out.stderr
    assert "Traceback" not in out.stderr


def test_second_daemon_on_same_socket_refused(daemon: Daemon) -> None:
    out = subprocess.run([sys.executable, "-m", "smtpd", "-d", "-f", str(daemon.conf)],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    assert "in use" in out.stderr
