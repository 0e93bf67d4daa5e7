"""Task plugins end to end: push versions, jobs pin them, the agent runs each job with exactly
its pinned versions, and a new version reaches new jobs without restarting anything."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from brinell import AlreadyExistsError, Client, Job, JobState, PluginPin

MANIFEST = """\
name: demo-plugin
version: {version}
description: A tiny plugin for the end-to-end tests.
requirements: []
package: demo_plugin
"""

TASKS = '''\
"""Greeting tasks."""

from brinell import task


@task
def greet(name: str) -> str:
    """Greets someone, saying which plugin version does it."""
    return "TAG: hello " + name
'''

MLPROJECT = """\
name: greeter
entry_points:
  main:
    plugins: [demo-plugin]
    parameters:
      who: {type: string, default: world}
      release: {type: string, default: ""}
    command: "python main.py"
"""

# Finds the task through brinell.runtime, runs it in a Prefect flow, prints the result, then
# waits for the file named by the `release` parameter, so the test decides when it ends.
MAIN = """\
import os
import time

from prefect import flow

from brinell import runtime

params = runtime.parameters()
greet = runtime.task("greet")


@flow(name="greeter")
def hello(who: str) -> str:
    return greet(who)


with runtime.prefect_flow_settings():
    print(hello(params.get("who", "world")), flush=True)
print("pins " + " ".join(f"{p['plugin']}=={p['version']}" for p in runtime.plugins()), flush=True)
release = params.get("release", "")
while release and not os.path.exists(release):
    time.sleep(0.05)
print("released", flush=True)
"""


_folders = itertools.count()


def write_plugin(root: Path, version: str, tag: str, extra: str = "") -> Path:
    """A plugin folder whose `greet` answers "<tag>: hello NAME"."""
    folder = root / f"demo-plugin-{version}-{tag}-{next(_folders)}"
    (folder / "demo_plugin").mkdir(parents=True)
    (folder / "brinell-plugin.yaml").write_text(MANIFEST.format(version=version))
    (folder / "demo_plugin" / "__init__.py").write_text('"""Demo plugin."""\n')
    (folder / "demo_plugin" / "greetings.py").write_text(TASKS.replace("TAG", tag) + extra)
    return folder


def write_entry_point(root: Path) -> Path:
    folder = root / "greeter"
    folder.mkdir()
    (folder / "MLproject").write_text(MLPROJECT)
    (folder / "main.py").write_text(MAIN)
    return folder


def texts(client: Client, job: Job | str) -> list[str]:
    return [ln.text for ln in client.jobs.logs(job)]


def wait_for_line(client: Client, job: Job, prefix: str, timeout: float = 120) -> Job:
    """Waits until the job is RUNNING and has printed a line starting with ``prefix``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = client.jobs.get(job)
        if current.is_final:
            raise AssertionError(f"{job.name} ended ({current.state}): {texts(client, job)}")
        if current.state == JobState.RUNNING and any(
            t.startswith(prefix) for t in texts(client, job)
        ):
            return current
        time.sleep(0.1)
    raise AssertionError(f"{job.name} never printed {prefix!r}: {texts(client, job)}")


def finished(client: Client, job: Job | str, timeout: float = 180) -> list[str]:
    final = client.jobs.wait(job, timeout=timeout)
    lines = texts(client, job)
    assert final.state == JobState.SUCCEEDED, (final.state_reason, lines)
    return lines


def test_new_plugin_version_reaches_new_jobs_without_any_restart(
    cluster: dict[str, Any],
) -> None:
    c: Client = cluster["client"]
    tmp: Path = cluster["tmp"]
    agent_proc = cluster["agent"].proc
    agent_pid = agent_proc.pid
    connected_at = c.agents.get("e2e-agent").connect_time
    c.experiments.create("plugins")

    # v1, pushed twice: the same bytes are the same version.
    v1_dir = write_plugin(tmp, "1.0.0", "v1")
    plugin, v1, created = c.plugins.push(v1_dir)
    assert created and plugin.id == "demo-plugin" and v1.version == "1.0.0"
    assert v1.package == "demo_plugin" and v1.digest.startswith("sha256:")
    greet = v1.task("greet")
    assert greet is not None and greet.module == "demo_plugin.greetings"
    assert [(i.name, i.type, i.default) for i in greet.inputs] == [("name", "str", None)]
    assert greet.output_type == "str" and greet.summary.startswith("Greets someone")
    again = c.plugins.push(v1_dir)
    assert again[2] is False and again[1].digest == v1.digest
    # Versions are immutable: other content under 1.0.0 is refused.
    changed = write_plugin(tmp, "1.0.0", "v1", extra="# an edit\n")
    with pytest.raises(AlreadyExistsError, match="1.0.0"):
        c.plugins.push(changed)

    ep, _ = c.entry_points.push(write_entry_point(tmp))
    release_a = tmp / "release-a"
    job_a = c.jobs.submit("plugins", ep, {"who": "A", "release": str(release_a)}, timeout=300)
    pin_v1 = PluginPin("plugins/demo-plugin", "1.0.0", v1.digest, "demo_plugin")
    assert job_a.plugins == (pin_v1,)
    wait_for_line(c, job_a, "v1: hello A")

    # v2 while A runs: A keeps v1, nothing is restarted.
    _, v2, created = c.plugins.push(write_plugin(tmp, "2.0.0", "v2"))
    assert created and v2.digest != v1.digest
    latest = c.plugins.get("demo-plugin")
    assert latest.latest_version is not None and latest.latest_version.version == "2.0.0"
    assert latest.version_count == 2
    assert [v.version for v in c.plugins.versions("demo-plugin")] == ["2.0.0", "1.0.0"]
    assert [p.id for p in c.plugins.list()] == ["demo-plugin"]
    assert c.plugins.version("demo-plugin", "1.0.0").digest == v1.digest
    assert [t.signature for t in c.plugins.tasks("demo-plugin")] == ["greet(name: str) -> str"]
    assert c.plugins.tasks(plugin, "1.0.0")[0].module == "demo_plugin.greetings"
    assert c.jobs.get(job_a).state == JobState.RUNNING

    release_a.touch()
    lines_a = finished(c, job_a)
    assert "v1: hello A" in lines_a and "released" in lines_a
    assert not any("v2" in t for t in lines_a)
    assert "pins plugins/demo-plugin==1.0.0" in lines_a
    assert any(t.startswith("using plugins: demo-plugin 1.0.0") for t in lines_a)

    # A new job gets the new version: pinned at submit, fetched by digest, no restart.
    job_b = c.jobs.submit("plugins", ep, {"who": "B"}, timeout=300)
    assert job_b.plugins == (PluginPin("plugins/demo-plugin", "2.0.0", v2.digest, "demo_plugin"),)
    lines_b = finished(c, job_b)
    assert "v2: hello B" in lines_b and not any("v1" in t for t in lines_b)

    # An explicit pin still gets the old version, from the agent's extracted cache.
    job_c = c.jobs.submit("plugins", ep, {"who": "C"}, plugin_versions={"demo-plugin": "1.0.0"})
    assert job_c.plugins == (pin_v1,)
    lines_c = finished(c, job_c)
    assert "v1: hello C" in lines_c and not any("v2" in t for t in lines_c)
    assert f"plugin demo-plugin 1.0.0 ({v1.digest}): already extracted" in lines_c
    assert c.jobs.get(job_c).plugins == (pin_v1,)

    # The MLflow run says which plugin versions and which entry point revision ran, and has
    # the parameters as its params.
    from mlflow.tracking import MlflowClient

    ml = MlflowClient(tracking_uri=f"sqlite:///{cluster['data'] / 'mlflow.db'}")
    run_b = ml.get_run(c.jobs.get(job_b).mlflow_run_id)
    assert run_b.data.tags["brinell.plugin.demo-plugin"] == f"2.0.0 {v2.digest}"
    assert run_b.data.tags["brinell.entry_point_digest"] == job_b.entry_point_digest
    assert run_b.data.params == {"who": "B", "release": ""}

    # One agent process throughout, never reconnected; each bundle extracted once.
    assert agent_proc.pid == agent_pid and agent_proc.poll() is None
    agent = c.agents.get("e2e-agent")
    assert agent.connect_time == connected_at
    extracted = sorted(p.name for p in (tmp / "agent" / "cache" / "plugins").iterdir())
    assert extracted == sorted(d.removeprefix("sha256:") for d in (v1.digest, v2.digest))
    agent_log = (tmp / "e2e-agent.log").read_text()
    assert agent_log.count("starting (control plane") == 1


def brinell_cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BRINELL_TARGET=target)
    return subprocess.run(
        [sys.executable, "-m", "brinell.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_plugin_cli(cluster: dict[str, Any]) -> None:
    c: Client = cluster["client"]
    tmp: Path = cluster["tmp"]
    target = cluster["target"]
    pushed = brinell_cli(target, "plugin", "push", str(write_plugin(tmp, "1.0.0", "v1")))
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed demo-plugin 1.0.0 sha256:" in pushed.stdout and "greet" in pushed.stdout
    again = brinell_cli(target, "--json", "plugin", "push", str(write_plugin(tmp, "1.0.0", "v1")))
    assert again.returncode == 0 and json.loads(again.stdout)["created"] is False
    bundle = tmp / "v2.tar.gz"
    from brinell.pack import pack_directory

    bundle.write_bytes(pack_directory(write_plugin(tmp, "2.0.0", "v2")))
    assert brinell_cli(target, "plugin", "push", str(bundle)).returncode == 0  # an archive
    conflict = brinell_cli(target, "plugin", "push", str(write_plugin(tmp, "2.0.0", "other")))
    assert conflict.returncode == 2 and "error: ALREADY_EXISTS" in conflict.stderr

    listed = brinell_cli(target, "plugin", "list")
    assert listed.returncode == 0 and "demo-plugin" in listed.stdout and "2.0.0" in listed.stdout
    versions = brinell_cli(target, "--json", "plugin", "versions", "demo-plugin")
    assert [v["version"] for v in json.loads(versions.stdout)] == ["2.0.0", "1.0.0"]
    tasks = brinell_cli(target, "plugin", "tasks", "demo-plugin", "--version", "1.0.0")
    assert tasks.returncode == 0, tasks.stderr
    assert "greet" in tasks.stdout and "name: str" in tasks.stdout
    assert "Greets someone" in tasks.stdout
    latest = brinell_cli(target, "--json", "plugin", "tasks", "plugins/demo-plugin")
    assert [t["name"] for t in json.loads(latest.stdout)] == ["greet"]
    shown = brinell_cli(target, "plugin", "get", "demo-plugin")
    assert shown.returncode == 0 and "2.0.0" in shown.stdout and "greet" in shown.stdout
    missing = brinell_cli(target, "plugin", "tasks", "demo-plugin", "--version", "9.9")
    assert missing.returncode == 2 and "error: NOT_FOUND" in missing.stderr

    c.experiments.create("cli-plugins")
    ep, _ = c.entry_points.push(write_entry_point(tmp))
    submitted = brinell_cli(
        target,
        "--json",
        "job",
        "submit",
        "cli-plugins",
        ep.id,
        "-p",
        "who=cli",
        "--plugin",
        "demo-plugin=1.0.0",
    )
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert [(p["plugin"], p["version"]) for p in job["plugins"]] == [
        ("plugins/demo-plugin", "1.0.0")
    ]
    assert "v1: hello cli" in finished(c, job["name"])
    unknown = brinell_cli(
        target, "job", "submit", "cli-plugins", ep.id, "--plugin", "demo-plugin=3.0.0"
    )
    assert unknown.returncode == 2 and "INVALID_ARGUMENT" in unknown.stderr
    assert "3.0.0" in unknown.stderr
