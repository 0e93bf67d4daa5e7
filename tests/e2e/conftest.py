"""End-to-end fixtures: real control plane and agent processes, a real Prefect server."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brinell import Client
from brinell.agent.prefect_server import PrefectServer, free_port
from tests.conftest import Proc, start_server


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


def start_agent(
    target: str,
    work: Path,
    prefect_url: str,
    agent_id: str = "e2e-agent",
    slots: int = 2,
    *args: str,
    env: dict[str, str] | None = None,
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
            # SIGTERM (Proc.stop) cancels at once unless a test asks for a drain.
            "--drain-timeout",
            "0",
            *args,
        ],
        work.parent / f"{agent_id}.log",
        env=env,
    )


def status(url: str, host: str) -> int:
    """The HTTP status of a GET with this Host header (loopback, no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def start_mlflow_server(store: Path, host: str, allowed: list[str]) -> tuple[Proc, int]:
    """An MLflow tracking server (SQLite backend, proxied artifacts in ``store``) answering
    the Host names in ``allowed``; returns once its health check answers."""
    port = free_port(host)
    store.mkdir(parents=True)
    proc = Proc(
        [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"]
        + ["--artifacts-destination", str(store / "mlartifacts")]
        + ["--allowed-hosts", ",".join(f"{name}:{port}" for name in allowed)],
        store.parent / f"{store.name}.log",
        cwd=store,
    )
    health = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + 120
    while True:
        try:
            if status(health, f"localhost:{port}") == 200:
                return proc, port
        except OSError:
            pass
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            log = (store.parent / f"{store.name}.log").read_text()[-3000:]
            raise AssertionError(f"mlflow server did not answer:\n{log}")
        time.sleep(0.5)


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
