"""GPU placement by UUID, with a fake `nvidia-smi` reporting four GPUs (no GPU here)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from brinell import Client, JobState, Resources
from tests.conftest import start_server
from tests.e2e.conftest import start_agent, wait_connected

UUIDS = [f"GPU-0000000{i}-aaaa-bbbb-cccc-00000000000{i}" for i in range(4)]

FAKE_SMI = "#!/bin/sh\n" + "".join(f"echo '{u}, NVIDIA H100 80GB HBM3, 81559'\n" for u in UUIDS)

# Prints what it sees, then holds its GPUs until a file appears (or 120 s pass).
PROJECT = """\
name: gpu-probe
entry_points:
  main:
    parameters:
      release: {type: string}
    command: >-
      sh -c 'echo visible=$CUDA_VISIBLE_DEVICES; i=0;
      while [ ! -e "$1" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done' probe {release}
"""


def _visible(client: Client, job: Any) -> list[str]:
    for line in client.jobs.logs(job):
        if line.text.startswith("visible="):
            return line.text.removeprefix("visible=").split(",")
    return []


def _wait(client: Client, job: Any, states: set[JobState], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = client.jobs.get(job)
        if j.state in states:
            return j
        time.sleep(0.1)
    raise AssertionError(f"{job.name} stayed {client.jobs.get(job).state}")


def test_three_two_gpu_jobs_on_four_gpus(tmp_path: Path, prefect_api_url: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    server, target = start_server(tmp_path / "server")
    agent = start_agent(
        target,
        tmp_path / "agent",
        "none",
        "gpu-agent",
        3,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    client = Client(target, timeout=30)
    try:
        wait_connected(client, "gpu-agent")
        seen = client.agents.get("gpu-agent")
        assert [g.uuid for g in seen.capacity.gpus] == UUIDS
        assert seen.capacity.gpus[0].model == "NVIDIA H100 80GB HBM3"
        assert seen.capacity.gpus[0].memory_bytes == 81559 * 1024 * 1024

        project = tmp_path / "probe"
        project.mkdir()
        (project / "MLproject").write_text(PROJECT)
        client.experiments.create("gpus")
        ep = client.entry_points.push(project)[0].id
        releases = [tmp_path / f"release-{i}" for i in range(3)]
        jobs = [
            client.jobs.submit(
                "gpus",
                ep,
                {"release": str(r)},
                resources=Resources(gpus=2, gpu_model="h100"),
            )
            for r in releases
        ]
        first = [_wait(client, j, {JobState.RUNNING}) for j in jobs[:2]]
        visible = [_wait_visible(client, j) for j in first]
        assert all(len(v) == 2 for v in visible), repr(
            (visible, [(j.gpu_uuids, j.resources) for j in first])
        )
        assert not set(visible[0]) & set(visible[1]), visible
        assert set(visible[0]) | set(visible[1]) == set(UUIDS)
        for j, v in zip(first, visible, strict=True):
            assert sorted(j.gpu_uuids) == sorted(v)
        # Three slots, but only two GPU pairs: the third waits, and says why.
        time.sleep(1.5)
        third = client.jobs.get(jobs[2])
        assert third.state is JobState.QUEUED
        assert "2 H100 GPUs" in third.state_reason or "2 h100 GPUs" in third.state_reason

        releases[1].touch()
        assert _wait(client, jobs[1], {JobState.SUCCEEDED}).state is JobState.SUCCEEDED
        _wait(client, jobs[2], {JobState.RUNNING})
        assert sorted(_wait_visible(client, jobs[2])) == sorted(visible[1])
        # A job asking for a model nobody has is told so.
        odd = client.jobs.submit(
            "gpus", ep, {"release": str(releases[0])}, resources=Resources(gpus=1, gpu_model="A100")
        )
        time.sleep(0.5)
        assert "fewer than 1 A100 GPU" in client.jobs.get(odd).state_reason
        client.jobs.cancel(odd)
        releases[0].touch()
        releases[2].touch()
        for j in (jobs[0], jobs[2]):
            assert _wait(client, j, {JobState.SUCCEEDED}).state is JobState.SUCCEEDED
    finally:
        client.close()
        agent.stop()
        server.stop()


def _wait_visible(client: Client, job: Any, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = _visible(client, job)
        if seen:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{job.name} printed no visible= line")


def test_jobs_without_gpus_see_none() -> None:
    from brinell.agent.executor import RunSpec, build_env

    spec = RunSpec(Path("/tmp"), "main", {}, "0" * 16, 1, host_has_gpus=True)
    assert build_env(spec, base={})["CUDA_VISIBLE_DEVICES"] == ""
    spec = RunSpec(Path("/tmp"), "main", {}, "0" * 16, 1, gpu_uuids=("GPU-a", "GPU-b"))
    assert build_env(spec, base={})["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"
    assert "CUDA_VISIBLE_DEVICES" not in build_env(
        RunSpec(Path("/tmp"), "main", {}, "0" * 16, 1), base={}
    )
