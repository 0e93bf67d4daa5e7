"""End-to-end fixtures: real control plane and agent processes, a real Prefect server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brinell import Client
from brinell.agent.prefect_server import PrefectServer


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect server for the session (the agent's own supervisor starts it)."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    url = asyncio.run_coroutine_threadsafe(server.start(), loop).result(180)
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


class Proc:
    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.cmd, self.log = cmd, log
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log.open("a"),
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
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


def start_server(data: Path, port: int = 0) -> tuple[Proc, str]:
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
        ],
        data.parent / f"{data.name}.log",
    )
    assert proc.proc.stdout is not None
    line = proc.proc.stdout.readline()
    match = re.search(r"listening on ([\d.]+:\d+)", line)
    if not match:
        proc.stop()
        raise RuntimeError(f"control plane did not start: {line!r}; see {proc.log}")
    return proc, match.group(1)


def start_agent(
    target: str, work: Path, prefect_url: str, agent_id: str = "e2e-agent", slots: int = 2
) -> Proc:
    return Proc(
        [
            sys.executable,
            "-m",
            "brinell.agent",
            "--control-plane",
            target,
            "--queue",
            "default",
            "--work-dir",
            str(work),
            "--agent-id",
            agent_id,
            "--slots",
            str(slots),
            "--prefect-api-url",
            prefect_url,
        ],
        work.parent / f"{agent_id}.log",
    )


def wait_connected(client: Client, agent_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(a.id == agent_id for a in client.agents.list(filter="state=CONNECTED")):
            return
        time.sleep(0.1)
    raise AssertionError(f"agent {agent_id} did not connect")


@pytest.fixture
def cluster(tmp_path: Path, prefect_api_url: str) -> Iterator[dict[str, Any]]:
    server, target = start_server(tmp_path / "server")
    agent = start_agent(target, tmp_path / "agent", prefect_api_url)
    client = Client(target, timeout=30)
    # A test may replace the server (a restart); teardown stops whatever is there then.
    state = {
        "client": client,
        "target": target,
        "server": server,
        "agent": agent,
        "data": tmp_path / "server",
        "tmp": tmp_path,
        "prefect": prefect_api_url,
    }
    try:
        wait_connected(client, "e2e-agent")
        yield state
    finally:
        client.close()
        state["agent"].stop()
        state["server"].stop()
