"""PluginService through a real server (SQLite and PostgreSQL): push, versions, tasks read
from source, conflicts, bad bundles, and pins at submit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from brinell.v1 import job_service_pb2 as job_pb
from brinell.v1 import job_service_pb2_grpc as job_grpc
from brinell.v1 import plugin_service_pb2 as pb
from brinell.v1 import plugin_service_pb2_grpc as pb_grpc
from tests.conftest import tar_gz
from tests.integration.test_api import code_of, setup_job_world, stubs  # noqa: F401

TASKS = '''
"""Demo tasks."""
from brinell import task
import brinell


@task
def load(n: int = 3, *, scale: float = 1.0) -> list[float]:
    """Makes data.

    More words."""
    return [scale * i for i in range(n)]


@brinell.task(name="shout", retries=1)
def greet(who: str) -> str:
    return who.upper()


def helper(x):
    return x


@task()
async def untyped(a, b=2):
    return a
'''


def bundle(
    version: str, body: str = TASKS, name: str = "demo", top: str = "", manifest: str | None = None
) -> bytes:
    files = {
        "brinell-plugin.yaml": manifest
        if manifest is not None
        else (
            f"name: {name}\nversion: {version}\ndescription: demo tasks\n"
            "package: demo_pkg\nrequirements: [numpy>=1.0]\n"
        ),
        "demo_pkg/__init__.py": '"""Demo."""\n',
        "demo_pkg/tasks.py": body,
    }
    return tar_gz(files, top=top)


def push(stub: Any, data: bytes, sha: str = "") -> pb.UploadPluginResponse:
    def messages() -> Iterator[pb.UploadPluginRequest]:
        yield pb.UploadPluginRequest(metadata=pb.UploadPluginMetadata(sha256=sha))
        for i in range(0, len(data), 64):
            yield pb.UploadPluginRequest(chunk=data[i : i + 64])

    return stub.UploadPlugin(messages())


@pytest.fixture
def plugins(channel: grpc.Channel) -> Any:
    return pb_grpc.PluginServiceStub(channel)


def test_push_versions_and_tasks(plugins: Any) -> None:
    first = push(plugins, bundle("1.0.0"))
    assert first.created and first.version.name == "plugins/demo/versions/1.0.0"
    assert first.version.digest.startswith("sha256:") and first.version.package == "demo_pkg"
    assert list(first.version.requirements) == ["numpy>=1.0"]
    tasks = {t.name: t for t in first.version.tasks}
    assert set(tasks) == {"load", "shout", "untyped"}  # helper() is not a task
    load = tasks["load"]
    assert load.module == "demo_pkg.tasks" and load.output_type == "list[float]"
    assert load.description.startswith("Makes data.")
    assert [(i.name, i.type, i.has_default, i.default_value) for i in load.inputs] == [
        ("n", "int", True, "3"),
        ("scale", "float", True, "1.0"),
    ]
    assert [(i.name, i.has_default) for i in tasks["untyped"].inputs] == [("a", False), ("b", True)]
    again = push(plugins, bundle("1.0.0"))
    assert not again.created and again.version.digest == first.version.digest
    code, msg = code_of(push, plugins, bundle("1.0.0", body=TASKS + "\n# changed\n"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "immutable" in msg

    push(plugins, bundle("2.0.0", top="wrapped"))  # a single top-level folder is fine
    push(plugins, bundle("1.5.0"))  # older than 2.0.0: not the latest
    got = plugins.GetPlugin(pb.GetPluginRequest(name="plugins/demo")).plugin
    assert got.latest_version.version == "2.0.0" and got.version_count == 3
    versions = plugins.ListPluginVersions(
        pb.ListPluginVersionsRequest(parent="plugins/demo", page_size=2)
    )
    assert [v.version for v in versions.versions] == ["2.0.0", "1.5.0"]
    rest = plugins.ListPluginVersions(
        pb.ListPluginVersionsRequest(
            parent="plugins/demo", page_size=2, page_token=versions.next_page_token
        )
    )
    assert [v.version for v in rest.versions] == ["1.0.0"] and not rest.next_page_token
    listed = plugins.ListPluginTasks(
        pb.ListPluginTasksRequest(parent="plugins/demo/versions/1.0.0")
    )
    assert {t.name for t in listed.tasks} == {"load", "shout", "untyped"}
    assert [p.name for p in plugins.ListPlugins(pb.ListPluginsRequest()).plugins] == [
        "plugins/demo"
    ]

    for call, req, code in [
        (plugins.GetPlugin, pb.GetPluginRequest(name="plugins/none"), grpc.StatusCode.NOT_FOUND),
        (
            plugins.GetPlugin,
            pb.GetPluginRequest(name="plugins/Bad!"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            plugins.GetPluginVersion,
            pb.GetPluginVersionRequest(name="plugins/demo/versions/9"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            plugins.GetPluginVersion,
            pb.GetPluginVersionRequest(name="plugins/demo"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            plugins.ListPluginVersions,
            pb.ListPluginVersionsRequest(parent="plugins/none"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            plugins.ListPluginVersions,
            pb.ListPluginVersionsRequest(parent="plugins/demo", page_token="forged"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            plugins.ListPluginTasks,
            pb.ListPluginTasksRequest(parent="plugins/demo/versions/0"),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]:
        assert code_of(call, req)[0] == code, req


def test_versions_are_read_as_text_and_compared_as_pep_440(plugins: Any) -> None:
    # YAML would read 1.10 as the float 1.1; the manifest's text is the version.
    ten = push(plugins, bundle("1.10", name="vers")).version
    assert ten.version == "1.10" and ten.name == "plugins/vers/versions/1.10"
    one = push(plugins, bundle("1.1", name="vers", body=TASKS + "# 1.1\n"))
    assert one.created and one.version.version == "1.1"
    got = plugins.GetPlugin(pb.GetPluginRequest(name="plugins/vers")).plugin
    assert got.latest_version.version == "1.10"  # 1.10 > 1.1 in PEP 440
    # "2.0" and "2.0.0" are one version: the second, with other content, is refused.
    assert push(plugins, bundle("2.0", name="vers")).version.version == "2.0"
    code, msg = code_of(push, plugins, bundle("2.0.0", name="vers", body=TASKS + "# x\n"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already exists (as 2.0)" in msg
    # PEP 440's normal form is what is stored.
    assert push(plugins, bundle("v3.0", name="vers")).version.version == "3.0"


def test_bad_bundles_are_refused_with_every_problem(plugins: Any) -> None:
    cases = {
        "not an archive": (b"plain bytes", "readable"),
        "no manifest": (tar_gz({"demo_pkg/__init__.py": ""}), "brinell-plugin.yaml"),
        "bad manifest": (
            bundle("1", manifest="name: Bad Name\nversion: one\npackage: 9x\n"),
            "plugin name 'Bad Name'",
        ),
        "no package": (
            tar_gz({"brinell-plugin.yaml": "name: p\nversion: 1\npackage: gone\n"}),
            "no package gone/",
        ),
        "syntax error": (bundle("1", body="def broken(:\n"), "demo_pkg/tasks.py:1"),
    }
    for case, (data, needle) in cases.items():
        code, msg = code_of(push, plugins, data)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, case
        assert needle in msg, (case, msg)
    _, msg = code_of(push, plugins, cases["bad manifest"][0])
    assert "version 'one'" in msg and "package '9x'" in msg  # all problems at once
    code, msg = code_of(push, plugins, bundle("1.0.0"), sha="0" * 64)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sha256 mismatch" in msg
    assert list(plugins.ListPlugins(pb.ListPluginsRequest()).plugins) == []


USES_DEMO_MLPROJECT = """\
name: uses-demo
entry_points:
  main:
    plugins: [demo]
    command: "python -c 'import demo_pkg'"
  ghost:
    plugins: [ghost]
    command: "true"
"""


def test_jobs_pin_only_the_plugins_they_use(
    plugins: Any,
    stubs: Any,  # noqa: F811
    channel: grpc.Channel,
) -> None:
    from tests.integration.test_api import upload

    jobs = job_grpc.JobServiceStub(channel)
    setup_job_world(stubs)
    upload(stubs, "uses-demo", tar_gz({"MLproject": USES_DEMO_MLPROJECT}))
    v1 = push(plugins, bundle("1.0.0")).version
    push(plugins, bundle("1.0.0", name="other"))
    v2 = push(plugins, bundle("2.0.0")).version

    def submit(ep: str = "uses-demo", **kwargs: Any) -> Any:
        return jobs.SubmitJob(
            job_pb.SubmitJobRequest(
                experiment="experiments/exp",
                entry_point=f"entryPoints/{ep}",
                parameters={"label": "x"} if ep == "sleepy" else {},
                **kwargs,
            )
        ).job

    def pins(job: Any) -> list[tuple[str, str]]:
        return [(p.plugin, p.version) for p in job.plugins]

    # An entry that declares no plugin pins none: a broken plugin cannot touch its jobs.
    assert pins(submit("sleepy")) == []
    latest = submit()
    assert [(p.plugin, p.version, p.digest) for p in latest.plugins] == [
        ("plugins/demo", "2.0.0", v2.digest)
    ]
    # Naming a version at submit pins it (and pins a plugin the entry does not declare).
    pinned = submit(plugin_versions={"demo": "1.0.0", "other": "1.0.0"})
    assert [(p.plugin, p.version, p.digest, p.package) for p in pinned.plugins][0] == (
        "plugins/demo",
        "1.0.0",
        v1.digest,
        "demo_pkg",
    )
    assert pins(pinned)[1] == ("plugins/other", "1.0.0")
    # Pins are stored with the job, not recomputed.
    push(plugins, bundle("3.0.0"))
    again = jobs.GetJob(job_pb.GetJobRequest(name=latest.name)).job
    assert again.plugins[0].version == "2.0.0"
    code, msg = code_of(submit, plugin_versions={"demo": "9.9", "ghost": "1"})
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'demo' has no version '9.9'" in msg and "3.0.0, 2.0.0, 1.0.0" in msg
    assert "'ghost'" in msg
    code, msg = code_of(submit, entry="ghost")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'ghost' (declared" in msg

    # Yanked: not pinned by default, refused by name with its reason; undone, back.
    yanked = plugins.YankPluginVersion(
        pb.YankPluginVersionRequest(name="plugins/demo/versions/3.0.0", reason="leaks data")
    ).version
    assert yanked.yanked and yanked.yank_reason == "leaks data"
    assert pins(submit()) == [("plugins/demo", "2.0.0")]
    shown = plugins.GetPlugin(pb.GetPluginRequest(name="plugins/demo")).plugin
    assert shown.latest_version.version == "2.0.0"
    code, msg = code_of(submit, plugin_versions={"demo": "3.0.0"})
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "version 3.0.0 is yanked: leaks data" in msg
    plugins.YankPluginVersion(
        pb.YankPluginVersionRequest(name="plugins/demo/versions/3.0.0", undo=True)
    )
    assert pins(submit()) == [("plugins/demo", "3.0.0")]
    # Deleted: gone from versions, pins and the plugin's latest; the last one takes the plugin.
    plugins.DeletePluginVersion(pb.DeletePluginVersionRequest(name="plugins/demo/versions/3.0.0"))
    versions = plugins.ListPluginVersions(pb.ListPluginVersionsRequest(parent="plugins/demo"))
    assert [v.version for v in versions.versions] == ["2.0.0", "1.0.0"]
    assert pins(submit()) == [("plugins/demo", "2.0.0")]
    code, _ = code_of(
        plugins.DeletePluginVersion,
        pb.DeletePluginVersionRequest(name="plugins/demo/versions/3.0.0"),
    )
    assert code == grpc.StatusCode.NOT_FOUND
    plugins.DeletePluginVersion(pb.DeletePluginVersionRequest(name="plugins/other/versions/1.0.0"))
    code, _ = code_of(plugins.GetPlugin, pb.GetPluginRequest(name="plugins/other"))
    assert code == grpc.StatusCode.NOT_FOUND
    # A version pushed after every one is yanked becomes the latest.
    for v in ("1.0.0", "2.0.0"):
        plugins.YankPluginVersion(pb.YankPluginVersionRequest(name=f"plugins/demo/versions/{v}"))
    assert not plugins.GetPlugin(pb.GetPluginRequest(name="plugins/demo")).plugin.HasField(
        "latest_version"
    )
    code, msg = code_of(submit)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "every version yanked" in msg
    push(plugins, bundle("1.5.0"))
    assert pins(submit()) == [("plugins/demo", "1.5.0")]


GRAPH_MLPROJECT = """\
name: graphs
entry_points:
  main:
    parameters:
      n: {type: int, default: 3}
      who: {type: string, default: ada}
      rate: {type: float, default: 0.5}
    graph: graph.yaml
  broken:
    parameters:
      who: {type: string, default: ada}
      rate: {type: float, default: 0.5}
    graph: broken.yaml
"""

GOOD_GRAPH = """\
steps:
  data: {task: load, args: {n: $n, scale: $rate}}
  hello: {task: shout, args: {who: $who}}
  join: {task: demo_pkg.tasks.untyped, args: {a: $data, b: $hello}}
"""

BROKEN_GRAPH = """\
steps:
  data: {task: lode, args: {n: $rate}}
  hello: {task: shout, args: {who: $nobody, loud: true}}
  a: {task: untyped, args: {a: $b}}
  b: {task: untyped, args: {a: $a}}
  count: {task: load, args: {n: $hello}}
"""


def test_task_graphs_are_validated_at_submit(
    plugins: Any,
    stubs: Any,  # noqa: F811
    channel: grpc.Channel,
) -> None:
    from tests.integration.test_api import upload

    jobs = job_grpc.JobServiceStub(channel)
    push(plugins, bundle("1.0.0"))
    stubs.exp.CreateExperiment(
        __import__("brinell.v1.experiment_service_pb2", fromlist=["x"]).CreateExperimentRequest(
            experiment_id="exp"
        )
    )
    code, msg = code_of(
        upload,
        stubs,
        "graphs",
        tar_gz(
            {
                "MLproject": GRAPH_MLPROJECT,
                "graph.yaml": "steps: [1, 2]",
                "broken.yaml": BROKEN_GRAPH,
            }
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "graph.yaml" in msg
    code, msg = code_of(
        upload, stubs, "graphs", tar_gz({"MLproject": GRAPH_MLPROJECT, "graph.yaml": GOOD_GRAPH})
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "broken.yaml" in msg  # missing file
    rev = upload(
        stubs,
        "graphs",
        tar_gz(
            {"MLproject": GRAPH_MLPROJECT, "graph.yaml": GOOD_GRAPH, "broken.yaml": BROKEN_GRAPH}
        ),
    ).revision
    main = next(e for e in rev.entries if e.name == "main")
    assert main.command == "python -m brinell.graph graph.yaml"

    other_tasks = (
        '"""Other."""\nfrom brinell import task\n\n\n@task\ndef count() -> int:\n    return 1\n'
    )
    push(plugins, bundle("1.0.0", other_tasks, name="unused"))  # no task the graph uses
    ok = jobs.SubmitJob(
        job_pb.SubmitJobRequest(experiment="experiments/exp", entry_point="entryPoints/graphs")
    ).job
    # The graph's plugins are inferred from its tasks: only `demo` is pinned.
    assert ok.state == 2 and [(p.plugin, p.version) for p in ok.plugins] == [
        ("plugins/demo", "1.0.0")
    ]

    with pytest.raises(grpc.RpcError) as info:
        jobs.SubmitJob(
            job_pb.SubmitJobRequest(
                experiment="experiments/exp", entry_point="entryPoints/graphs", entry="broken"
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    msg = info.value.details()
    for needle in ("'lode'", "$nobody", "'loud'", "cycle", "'count'"):
        assert needle in msg, (needle, msg)
