"""Agent faults with real processes (issue 10): nothing of a lost attempt keeps running, and
the job still succeeds exactly once."""

from __future__ import annotations

import signal
import time
from typing import Any

from brinell import Client, JobState
from tests.e2e.conftest import start_agent, wait_connected
from tests.e2e.test_jobs import alive, pids

QUIET = """\
name: quiet
entry_points:
  main:
    parameters:
      seconds: {type: float, default: 8}
    command: "python quiet.py {seconds}"
"""
QUIET_PY = """\
import os, sys, time
print(f"pid={os.getpid()}", flush=True)
time.sleep(float(sys.argv[1]))
print("done")
"""


def test_a_killed_agent_takes_its_job_with_it_and_the_job_succeeds_once(
    cluster: dict[str, Any],
) -> None:
    """Fix 2: a quiet job (prints once, then computes) survived `kill -9` of its agent and ran
    to the end while its requeued attempt ran elsewhere."""
    c: Client = cluster["client"]
    project = cluster["tmp"] / "quiet"
    project.mkdir()
    (project / "MLproject").write_text(QUIET)
    (project / "quiet.py").write_text(QUIET_PY)
    c.experiments.create("faults")
    ep, _ = c.entry_points.push(project)
    job = c.jobs.submit("faults", ep, {"seconds": 8})
    pid = pids(c, job)["pid"]
    assert alive(pid)
    agent = cluster["agent"]
    agent.proc.send_signal(signal.SIGKILL)  # the agent alone: the job is in its own session
    agent.proc.wait(30)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "the killed agent's job is still running"

    other = start_agent(cluster["target"], cluster["tmp"] / "agent2", cluster["prefect"], "spare")
    try:
        wait_connected(c, "spare")
        final = c.jobs.wait(job, timeout=120)
        assert final.state == JobState.SUCCEEDED, final.state_reason
        assert final.attempt == 2 and final.agent == "agents/spare"
        done = [ln for ln in c.jobs.logs(job) if ln.text == "done"]
        assert [ln.attempt for ln in done] == [2]
    finally:
        other.stop()
