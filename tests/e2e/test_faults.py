"""Agent faults with real processes (issue 10): nothing of a lost attempt keeps running, and
the job still succeeds exactly once."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from brinell import Client, JobState, LogStream
from tests.conftest import start_server
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


TICKER = """\
name: ticker
entry_points:
  main:
    parameters:
      n: {type: int, default: 10}
    command: "python ticker.py {n}"
"""
TICKER_PY = """\
import sys, time
for i in range(int(sys.argv[1])):
    print(f"tick {i}", flush=True)
    time.sleep(0.25)
"""


def test_followers_and_watchers_ride_out_a_control_plane_restart(
    cluster: dict[str, Any],
) -> None:
    """Fix 5: with 23 s of downtime, 3/3 log followers and 3/3 watchers raised
    UnavailableError (the SDK gave up after about 12 s)."""
    c: Client = cluster["client"]
    project = cluster["tmp"] / "ticker"
    project.mkdir()
    (project / "MLproject").write_text(TICKER)
    (project / "ticker.py").write_text(TICKER_PY)
    c.experiments.create("outage")
    ep, _ = c.entry_points.push(project)
    n = 120
    job = c.jobs.submit("outage", ep, {"n": n})
    target = cluster["target"]
    results: dict[str, Any] = {}

    def follow(key: str) -> None:
        with Client(target, timeout=30) as mine:
            try:
                results[key] = list(mine.jobs.logs(job, follow=True, timeout=300))
            except Exception as exc:  # the assertion below shows it
                results[key] = exc

    def watch(key: str) -> None:
        with Client(target, timeout=30) as mine:
            try:
                results[key] = mine.jobs.wait(job, timeout=300)
            except Exception as exc:
                results[key] = exc

    while not any(ln.text == "tick 2" for ln in c.jobs.logs(job)):
        time.sleep(0.1)
    threads = [threading.Thread(target=follow, args=(f"follow{i}",)) for i in range(2)]
    threads += [threading.Thread(target=watch, args=(f"watch{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    cluster["server"].stop(signal.SIGKILL)

    def get() -> None:
        # A one-shot call during the outage: retried for as long as the client's timeout.
        with Client(target, timeout=40) as mine:
            try:
                results["get"] = mine.jobs.get(job)
            except Exception as exc:
                results["get"] = exc

    threads.append(threading.Thread(target=get))
    threads[-1].start()
    time.sleep(20)  # longer than the old SDK's retries lasted
    server, _ = start_server(cluster["data"], port=int(target.rsplit(":", 1)[1]))
    cluster["server"] = server
    for thread in threads:
        thread.join(300)
    assert not isinstance(results["get"], Exception), results["get"]
    assert results["get"].id == job.id
    for key in ("watch0", "watch1"):
        assert not isinstance(results[key], Exception), results[key]
        assert results[key].state == JobState.SUCCEEDED, results[key].state_reason
    for key in ("follow0", "follow1"):
        lines = results[key]
        assert not isinstance(lines, Exception), lines
        ticks = [ln.text for ln in lines if ln.stream == LogStream.STDOUT]
        assert ticks == [f"tick {i}" for i in range(n)]
        offsets = [ln.offset for ln in lines]
        assert offsets == list(range(len(lines)))


def test_a_frozen_agent_past_its_lease_changes_nothing_when_it_thaws(
    cluster: dict[str, Any],
) -> None:
    """SIGSTOP an agent past its lease (5 s here), then SIGCONT: the job succeeds on another
    agent; the frozen one gets no work meanwhile, and what its stale attempt then reports and
    logs changes nothing."""
    c: Client = cluster["client"]
    project = cluster["tmp"] / "quiet"
    project.mkdir()
    (project / "MLproject").write_text(QUIET)
    (project / "quiet.py").write_text(QUIET_PY)
    c.experiments.create("frozen")
    ep, _ = c.entry_points.push(project)
    job = c.jobs.submit("frozen", ep, {"seconds": 4})
    pids(c, job)  # running on the only agent
    frozen = cluster["agent"]
    frozen.proc.send_signal(signal.SIGSTOP)
    other = start_agent(cluster["target"], cluster["tmp"] / "agent2", cluster["prefect"], "spare")
    try:
        wait_connected(c, "spare")
        deadline = time.monotonic() + 60
        while (j := c.jobs.get(job)).attempt < 2:
            assert time.monotonic() < deadline, j
            time.sleep(0.2)
        assert j.agent == "agents/spare"
        time.sleep(6)  # attempt 1 has finished meanwhile, unseen: its agent is frozen
        frozen.proc.send_signal(signal.SIGCONT)
        final = c.jobs.wait(job, timeout=120)
        assert final.state == JobState.SUCCEEDED and final.attempt == 2, final.state_reason
        time.sleep(3)  # the thawed agent reports and replays what it has
        again = c.jobs.get(job)
        assert (again.state, again.attempt, again.agent) == (
            JobState.SUCCEEDED,
            2,
            "agents/spare",
        )
        done = [ln.attempt for ln in c.jobs.logs(job) if ln.text == "done"]
        assert done == [2]
        # Alive again after a heartbeat: the thawed agent takes new work (the spare is gone).
        other.stop()
        extra = c.jobs.submit("frozen", ep, {"seconds": 0})
        finished = c.jobs.wait(extra, timeout=120)
        assert finished.state == JobState.SUCCEEDED and finished.agent == "agents/e2e-agent"
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
        other.stop()


def _quiet(cluster: dict[str, Any], name: str) -> str:
    project = cluster["tmp"] / name
    project.mkdir()
    (project / "MLproject").write_text(QUIET)
    (project / "quiet.py").write_text(QUIET_PY)
    c: Client = cluster["client"]
    c.experiments.get_or_create("drain")
    ep, _ = c.entry_points.push(project)
    return ep.id


def test_drain_lets_running_jobs_finish_takes_no_new_work_then_exits(
    cluster: dict[str, Any],
) -> None:
    c: Client = cluster["client"]
    ep = _quiet(cluster, "quiet-drain")
    agent = start_agent(
        cluster["target"],
        cluster["tmp"] / "drainer",
        cluster["prefect"],
        "drainer",
        2,
        "--queue",
        "drainq",
        "--drain-timeout",
        "60",
    )
    wait_connected(c, "drainer")
    running = c.jobs.submit("drain", ep, {"seconds": 4}, queue="drainq")
    pids(c, running)
    drained = c.agents.drain("drainer", reason="maintenance")
    assert drained.state == "DRAINING"
    waiting = c.jobs.submit("drain", ep, {"seconds": 0}, queue="drainq")
    assert c.jobs.wait(running, timeout=60).state == JobState.SUCCEEDED
    assert agent.proc.wait(60) == 0  # it exits once its jobs are done
    assert c.jobs.get(waiting).state == JobState.QUEUED  # never given to the draining agent
    c.jobs.cancel(waiting)


def test_sigterm_drains_until_the_deadline_then_requeues(cluster: dict[str, Any]) -> None:
    c: Client = cluster["client"]
    ep = _quiet(cluster, "quiet-term")
    agent = start_agent(
        cluster["target"],
        cluster["tmp"] / "termed",
        cluster["prefect"],
        "termed",
        1,
        "--queue",
        "termq",
        "--drain-timeout",
        "2",
    )
    wait_connected(c, "termed")
    job = c.jobs.submit("drain", ep, {"seconds": 60}, queue="termq")
    pid = pids(c, job)["pid"]
    # Every state the job goes through (the reason a requeued job waits for replaces the
    # requeue's own a second later: no agent serves termq any more).
    seen: list[tuple[JobState, str]] = []
    watcher = threading.Thread(
        target=lambda: seen.extend((j.state, j.state_reason) for j in c.jobs.watch(job)),
        daemon=True,
    )
    watcher.start()
    agent.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while c.agents.get("termed").state != "DRAINING":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert agent.proc.wait(60) == 0
    assert not alive(pid)
    # Stopped by its agent, not cancelled by anyone: requeued for another agent.
    requeued = c.jobs.get(job)
    assert requeued.state == JobState.QUEUED and requeued.attempt == 1
    c.jobs.cancel(job)
    watcher.join(30)
    assert any(
        state == JobState.QUEUED and "stopped the attempt" in why and "drained" in why
        for state, why in seen
    ), seen
