"""The parent's filter supervisor: start, stderr to the log, restart with a
doubling backoff, stop (run unprivileged: no identity change)."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from smtpd.filter import supervisor as sup
from smtpd.filter.runtime import ProcSpec


def test_dead_filter_is_restarted_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    handed: list[tuple[str, int]] = []

    def send_fd(name: str, generation: int, fd: int) -> None:
        handed.append((name, generation))
        os.close(fd)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        log = logging.getLogger("test.sup")
        s = sup.FilterSupervisor(
            {"f": ProcSpec("f", "echo complaint >&2; exit 3")}, loop, log, send_fd,
            root=False, default_user="nobody", restart_min=0.05, restart_max=0.1)
        s.start_all()
        deadline = loop.time() + 5
        while len(handed) < 4 and loop.time() < deadline:
            s.reap()  # the parent calls it on SIGCHLD
            await asyncio.sleep(0.01)
        await s.close()
        assert not s.pids()

    with caplog.at_level(logging.INFO, logger="test.sup"):
        asyncio.run(main())
    assert [g for _n, g in handed[:4]] == [1, 2, 3, 4]
    text = caplog.text
    assert "filter f: complaint" in text
    assert "exited with status 3" in text
    delays = [line.split("restarting in ")[1] for line in text.splitlines()
              if "restarting in" in line]
    assert delays[:3] == ["0.05 s", "0.1 s", "0.1 s"]  # doubling, capped


def test_long_running_filter_is_stopped(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fds: list[int] = []
        s = sup.FilterSupervisor({"f": ProcSpec("f", "exec sleep 30")}, loop,
                                 logging.getLogger("test.sup"),
                                 lambda _n, _g, fd: fds.append(fd), root=False,
                                 default_user="nobody")
        s.start_all()
        (pid,) = s.pids().values()
        await s.close(grace=1.0)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        for fd in fds:
            os.close(fd)

    asyncio.run(main())
