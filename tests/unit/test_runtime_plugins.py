"""Job-side helpers (``brinell.runtime``): parameters, pinned plugins, tasks by name; and
the SDK's plugin types built from protobuf messages."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from brinell import Client, InvalidArgumentError, Job, PluginPin, Task, runtime
from brinell.plugins import Plugin, PluginVersion
from brinell.v1 import job_pb2, plugin_pb2


def test_parameters_and_plugins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRINELL_PARAMETERS", raising=False)
    monkeypatch.delenv("BRINELL_PLUGINS", raising=False)
    assert runtime.parameters() == {} and runtime.plugins() == []  # by hand, outside a job
    monkeypatch.setenv("BRINELL_PARAMETERS", json.dumps({"name": "Ada", "rounds": "3"}))
    assert runtime.parameters() == {"name": "Ada", "rounds": "3"}
    pins = [
        {
            "plugin": "plugins/a",
            "version": "1.0.0",
            "digest": "sha256:x",
            "package": "a",
            "path": "/p",
        }
    ]
    monkeypatch.setenv("BRINELL_PLUGINS", json.dumps(pins))
    assert runtime.plugins() == pins
    monkeypatch.setenv("BRINELL_PARAMETERS", "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        runtime.parameters()


@pytest.fixture
def plugin_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A plugin package on sys.path with tasks in a module, a subpackage and a broken module."""
    name = f"rt_plugin_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""A test plugin."""\n')
    (pkg / "tasks.py").write_text(
        "from brinell import task\n\n\n@task\ndef greet(name: str) -> str:\n"
        '    """Says hello."""\n    return f\'hello {name}\'\n'
    )
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "loud.py").write_text(
        "import brinell\n\n\n@brinell.task(name='shout')\ndef yell(name: str) -> str:\n"
        "    return name.upper()\n"
    )
    (pkg / "needs_gpu.py").write_text("import not_installed_anywhere_xyz  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BRINELL_PLUGIN_PACKAGES", f"{name},{name}")
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def test_tasks_by_name_and_qualified_name(plugin_package: str) -> None:
    with pytest.warns(RuntimeWarning, match="needs_gpu"):
        tasks = runtime.load_plugins()
    assert {"greet", "shout"} <= set(tasks)
    assert f"{plugin_package}.needs_gpu" in runtime.plugin_import_errors()

    greet = runtime.task("greet")
    assert greet.fn("Ada") == "hello Ada"
    # Module-qualified: by the function name or by the task's name.
    assert runtime.task(f"{plugin_package}.sub.loud.yell") is runtime.task("shout")
    assert runtime.task(f"{plugin_package}.sub.loud.shout").fn("a") == "A"

    with pytest.raises(KeyError) as info:
        runtime.task("nope")
    message = str(info.value)
    assert "greet" in message and "shout" in message
    assert f"{plugin_package}.needs_gpu" in message and "not_installed_anywhere_xyz" in message

    with pytest.raises(ImportError, match="needs_gpu"):
        runtime.load_plugins(strict=True)


def test_sdk_plugin_types_from_proto() -> None:
    task = plugin_pb2.Task(
        name="fgsm",
        module="ml.attacks",
        description="Fast gradient sign.\n\nMore.",
        output_type="Dataset",
        inputs=[
            plugin_pb2.TaskInput(name="model", type="Model"),
            plugin_pb2.TaskInput(name="eps", type="float", has_default=True, default_value="0.1"),
        ],
    )
    version = plugin_pb2.PluginVersion(
        name="plugins/ml/versions/1.2.0",
        version="1.2.0",
        digest="sha256:ab",
        size_bytes=10,
        requirements=["numpy>=1"],
        package="ml",
        tasks=[task],
    )
    version.create_time.FromSeconds(1_700_000_000)
    plugin = Plugin.from_proto(
        plugin_pb2.Plugin(name="plugins/ml", latest_version=version, version_count=2)
    )
    assert plugin.id == "ml" and plugin.version_count == 2
    v = plugin.latest_version
    assert isinstance(v, PluginVersion) and v.plugin == "plugins/ml" and v.plugin_id == "ml"
    assert v.requirements == ("numpy>=1",) and v.create_time is not None
    t = v.task("fgsm")
    assert isinstance(t, Task) and t.summary == "Fast gradient sign."
    assert [i.required for i in t.inputs] == [True, False]
    assert t.signature == "fgsm(model: Model, eps: float = 0.1) -> Dataset"
    assert Plugin.from_proto(plugin_pb2.Plugin(name="plugins/x")).latest_version is None

    job = Job.from_proto(
        job_pb2.Job(
            name="jobs/j",
            plugins=[
                plugin_pb2.PluginPin(
                    plugin="plugins/ml", version="1.2.0", digest="sha256:ab", package="ml"
                )
            ],
        )
    )
    assert job.plugins == (PluginPin("plugins/ml", "1.2.0", "sha256:ab", "ml"),)
    assert job.plugins[0].plugin_id == "ml"


def test_push_checks_the_path_before_calling(tmp_path: Path) -> None:
    with Client("127.0.0.1:1", timeout=1) as client:  # nothing listens: no call may be made
        with pytest.raises(InvalidArgumentError, match="brinell-plugin.yaml"):
            client.plugins.push(tmp_path)
        (tmp_path / "notes.txt").write_text("x")
        with pytest.raises(InvalidArgumentError, match="tar.gz"):
            client.plugins.push(tmp_path / "notes.txt")
        with pytest.raises(FileNotFoundError):
            client.plugins.push(tmp_path / "missing")
        with pytest.raises(InvalidArgumentError, match="not a plugin version"):
            client.plugins.version("ml", "1/2")
