from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon import Daemon, temp_workdir


def free_port() -> int:
    """A port nobody listens on now (the grammar refuses port 0, as upstream)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic_config(workdir: Path) -> str:
    return BASIC % {"mail": workdir / "mail", "port": free_port()}

BASIC = """
listen on 127.0.0.1 port %(port)d
action "local" maildir "%(mail)s/%%{user.username}"
match from any for local action "local"
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not tmp_path: its 0700 parents keep the daemon's own users out.
    path = temp_workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(workdir: Path) -> Iterator[Daemon]:
    d = Daemon(workdir, basic_config(workdir))
    d.start()
    yield d
    d.kill_group()
