"""Shared fixtures: real control planes on port 0, a real PostgreSQL, archives."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from brinell.controlplane.server import ControlPlane, ServerConfig
from brinell.credentials import open_channel

ROOT = Path(__file__).resolve().parent.parent

#: Every control plane a test starts (thread or process) bootstraps its admin with this token,
#: and every client, CLI and agent the tests start sends it (through the environment), so
#: tests that are not about credentials need no set-up. Tests about credentials create their
#: own users and tokens, or send none.
ADMIN_TOKEN = "brn_test-admin-token-0123456789abcdef"
os.environ["BRINELL_BOOTSTRAP_TOKEN"] = ADMIN_TOKEN
os.environ["BRINELL_TOKEN"] = ADMIN_TOKEN


class ServerThread:
    """A real control plane (grpc.aio) on its own event loop thread, listening on port 0."""

    def __init__(self, config: ServerConfig) -> None:
        self.cp = ControlPlane(config)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.cp.start())
        except BaseException as exc:  # surfaced in start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> ServerThread:
        self.thread.start()
        self._ready.wait(60)
        if self._error:
            raise self._error
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.cp.port}"

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.cp.stop(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def admin_channel(target: str) -> grpc.Channel:
    """A raw channel that sends the tests' admin token on every call."""
    return open_channel(target, ADMIN_TOKEN, None, [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL started for this test session (initdb + pg_ctl as `postgres`)."""
    initdb = shutil.which("initdb") or next(
        iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None
    )
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (initdb not found); .ci/run installs it")
    bindir = Path(initdb).parent
    base = Path(tempfile.mkdtemp(prefix="brinell-pg-"))
    os.chmod(base, 0o755)
    data = base / "data"
    data.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(data, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(base / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def fresh_pg_database(url: str) -> str:
    """A new empty database on the session's PostgreSQL, so tests don't share tables."""
    import uuid

    from sqlalchemy import create_engine, text

    name = "t_" + uuid.uuid4().hex[:12]
    engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'brinell.db'}"
    return fresh_pg_database(request.getfixturevalue("postgres_url"))


class Proc:
    """A process in its own session; stop() leaves nothing of it behind."""

    def __init__(
        self,
        cmd: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.cmd, self.log = cmd, log
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log.open("a"),
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # nothing of it may outlive the test
        return self.proc.returncode


def start_server(data: Path, port: int = 0, *args: str) -> tuple[Proc, str]:
    """A control plane as its own process (`python -m brinell.controlplane`).

    Nothing process-global of the test's (MLflow's tracking URI, the environment it changed)
    reaches it. It runs in an empty working directory, ``<data>-cwd``, which must stay empty.
    """
    cwd = data.parent / f"{data.name}-cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    proc = Proc(
        [
            sys.executable,
            "-m",
            "brinell.controlplane",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--heartbeat-interval",
            "0.5",
            "--lease-duration",
            "5",
            "--grace-period",
            "2",
            *args,
        ],
        data.parent / f"{data.name}.log",
        cwd=cwd,
    )
    assert proc.proc.stdout is not None
    line = proc.proc.stdout.readline()
    match = re.search(r"listening on ([\d.]+:\d+)", line)
    if not match:
        proc.stop()
        raise RuntimeError(f"control plane did not start: {line!r}; see {proc.log}")
    return proc, match.group(1)


def make_server(tmp_path: Path, **overrides: Any) -> ServerThread:
    config = ServerConfig(
        port=0,
        data_dir=tmp_path / "server",
        mlflow_tracking_uri="none",
        heartbeat_interval=0.5,
        lease_duration=3.0,
        reaper_interval=0.2,
        grace_period=2.0,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return ServerThread(config).start()


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerThread]:
    srv = make_server(tmp_path, database_url=database_url)
    yield srv
    srv.stop()


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with admin_channel(server.target) as ch:
        yield ch


def tar_gz(files: dict[str, str | bytes], top: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, content in sorted(files.items()):
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SLEEPY_MLPROJECT = """\
name: sleepy
entry_points:
  main:
    parameters:
      seconds: {type: float, default: 0}
      rounds: {type: int, default: 1}
      label: {type: string}
      data: {type: path, default: data.csv}
    command: "python -c 'import time,sys; time.sleep(float(sys.argv[1])); print(sys.argv[2])' {seconds} {label}"
"""


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


CLI = [sys.executable, "-m", "brinell.cli"]


def run_cli(target: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `brinell` command against a control plane, as a separate process."""
    env = dict(os.environ, BRINELL_TARGET=target)
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc
