"""The bare install (`pip install brinell`: grpcio, protobuf, PyYAML) and what it says when a
command needs an extra it lacks: one line naming the pip command, never a traceback.

The bare environment is a real virtual environment holding only those three distributions
(linked from this one, so nothing is downloaded) and Brinell itself (its editable finder).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from brinell import Client
from tests.conftest import ROOT, Proc, start_server

BARE_DISTRIBUTIONS = ("grpcio", "protobuf", "PyYAML")


def _top_level(dist: metadata.Distribution) -> set[str]:
    """The importable top-level names a distribution installed (from its RECORD)."""
    names: set[str] = set()
    for f in dist.files or ():
        first = f.parts[0]
        if first.endswith((".dist-info", ".data")) or first == "..":
            continue
        names.add(first)
    return names


def _closure(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """The distributions and everything they require (for this interpreter, no extras)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        dist = metadata.distribution(todo.pop())
        key = canonicalize_name(dist.metadata["Name"])
        if key in seen:
            continue
        seen[key] = dist
        for raw in dist.requires or ():
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths()["purelib"])
    bare_site = next(venv.glob("lib/python*/site-packages"))
    for dist in _closure(BARE_DISTRIBUTIONS):
        for top in _top_level(dist):
            target = bare_site / top
            if top == "google":  # a namespace shared with other distributions: protobuf's part
                target.mkdir(exist_ok=True)
                for sub in ("protobuf", "_upb"):
                    if (purelib / "google" / sub).exists():
                        (target / sub).symlink_to(purelib / "google" / sub)
            elif not target.exists():
                target.symlink_to(purelib / top)
    # Brinell itself, as `pip install -e .` put it here: its finder and the .pth that loads it.
    for f in purelib.glob("__editable__*brinell*"):
        (bare_site / f.name).symlink_to(f)
    python = venv / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import grpc, google.protobuf, yaml, brinell; import typer"],
        capture_output=True,
        text=True,
    )
    assert "No module named 'typer'" in probe.stderr, probe.stderr  # bare indeed
    return python


def _run(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )


def test_the_sdk_works_bare_and_the_cli_names_its_extra(bare_python: Path) -> None:
    sdk = _run(bare_python, "-c", "from brinell import Client; print(Client.__name__)")
    assert sdk.returncode == 0 and sdk.stdout.strip() == "Client", sdk.stderr

    cli = _run(bare_python, "-m", "brinell", "--help")
    assert cli.returncode == 1
    assert cli.stderr == (
        "the brinell command needs typer, which is not installed: pip install 'brinell[cli]'\n"
    )
    # The console script runs the same function.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["brinell"] == "brinell.__main__:main"


def test_the_server_names_its_extra(bare_python: Path) -> None:
    server = _run(bare_python, "-m", "brinell.controlplane", "--port", "0")
    assert server.returncode == 1 and "Traceback" not in server.stderr
    assert server.stderr.startswith("python -m brinell.controlplane needs ")
    assert server.stderr.endswith(", which is not installed: pip install 'brinell[server]'\n")


def test_the_agent_refuses_to_start_without_prefect_unless_told(
    bare_python: Path, tmp_path: Path
) -> None:
    args = ["-m", "brinell.agent", "--control-plane", "127.0.0.1:1", "--work-dir"]
    refused = _run(bare_python, *args, str(tmp_path / "w1"))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr == (
        "brinell agent: the agent's jobs need Prefect, which is not installed here: "
        "pip install 'brinell[agent]' (or start the agent with --prefect-api-url none for "
        "jobs that do not use Prefect)\n"
    )

    # Told that its jobs do without Prefect, the bare agent starts and connects.
    server, target = start_server(tmp_path / "server")
    agent = Proc(
        [str(bare_python), "-m", "brinell.agent", "--control-plane", target, "--agent-id"]
        + ["bare", "--work-dir", str(tmp_path / "w2"), "--prefect-api-url", "none"],
        tmp_path / "agent.log",
    )
    try:
        with Client(target, timeout=10) as c:
            deadline = time.monotonic() + 30
            while not any(a.id == "bare" for a in c.agents.list(filter="state=CONNECTED")):
                assert agent.proc.poll() is None, (tmp_path / "agent.log").read_text()
                assert time.monotonic() < deadline, "the bare agent did not connect"
                time.sleep(0.1)
    finally:
        agent.stop()
        server.stop()
