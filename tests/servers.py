"""Throw-away PostgreSQL and Redis servers for tests (issue 14).

``PgServer`` runs initdb + postgres in a fresh temp directory, listening on
127.0.0.1 (a free port) and on a unix socket in its data directory, with
trust authentication and fsync off (throw-away data).  PostgreSQL refuses to
run as root, so as root the cluster belongs to ``nobody``.  ``RedisServer``
runs redis-server on 127.0.0.1 without persistence.  Both kill their process
group on ``stop()``.  The fixtures skip with a clear reason when the
binaries are missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_USER = "nobody"  # who owns the cluster when the tests run as root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[4]))
    return Path(dirs[-1]) if dirs and (Path(dirs[-1]) / "initdb").exists() else None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class PgServer:
    def __init__(self, *, durable: bool = False) -> None:
        """``durable``: fsync and synchronous commit on (benchmarks); tests
        keep them off (throw-away data, faster)."""
        self.durable = durable
        bindir = pg_bindir()
        if bindir is None:
            raise FileNotFoundError("initdb not found (apt-get install postgresql)")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="pysmtpd-pg-"))
        os.chmod(self.dir, 0o755)
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: str | None = None
        self.uid = self.gid = -1
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            self.user, self.uid, self.gid = PG_USER, pw.pw_uid, pw.pw_gid
            os.chown(self.dir, self.uid, self.gid)

    @property
    def _ids(self) -> tuple[int | None, int | None, list[int] | None]:
        """(user, group, extra_groups) for Popen: nobody's when root."""
        if self.user is None:
            return None, None, None
        return self.uid, self.gid, []

    def start(self, timeout: float = 30.0) -> PgServer:
        env = {**os.environ, "LC_ALL": "C", "HOME": str(self.dir)}
        if not (self.data / "PG_VERSION").exists():  # a restart keeps its data
            subprocess.run(
                [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"],
                check=True, capture_output=True, env=env, cwd=self.dir,
                user=self._ids[0], group=self._ids[1], extra_groups=self._ids[2])
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.data), "-c", "listen_addresses=127.0.0.1",
             "-c", "max_connections=100",
             *([] if self.durable else ["-c", "fsync=off", "-c", "synchronous_commit=off",
                                        "-c", "full_page_writes=off"])],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "wb"),  # noqa: SIM115
            env=env, cwd=self.dir, start_new_session=True,
            user=self._ids[0], group=self._ids[1], extra_groups=self._ids[2])
        deadline = time.monotonic() + timeout
        while True:
            try:
                import psycopg
                psycopg.connect(self.conninfo(), connect_timeout=2).close()
                return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "log").read_text(errors="replace")
                    self.stop()
                    raise RuntimeError(f"postgres did not start:\n{log}") from None
                time.sleep(0.1)

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self) -> str:
        """A new empty database; returns its conninfo."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.conninfo(name)

    def halt(self) -> None:
        """Fast shutdown, keeping the data (an outage; ``start()`` again)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found (apt-get install redis-server)")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="pysmtpd-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        import redis
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping()
                return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = PgServer()
    except (FileNotFoundError, KeyError) as exc:
        pytest.skip(f"no PostgreSQL server binaries: {exc}")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_db(pg_server: PgServer) -> str:
    """The conninfo of a fresh database on the session's server."""
    return pg_server.create_database()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer()
    except FileNotFoundError as exc:
        pytest.skip(f"no redis-server binary: {exc}")
    server.start()
    yield server
    server.stop()
