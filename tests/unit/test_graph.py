"""Task graphs: parsing, validation against task signatures, ordering, and real Prefect runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brinell import task
from brinell.graph import (
    Graph,
    GraphError,
    Ref,
    Step,
    StepFailedError,
    TaskSignature,
    load_plugins,
    parse,
    run,
    topological_order,
    validate,
)
from brinell.plugin import describe

ROOT = Path(__file__).resolve().parents[2]

# --- hand-made signatures, as the control plane builds them from plugin manifests -------

SIGNATURES = [
    TaskSignature(
        "load_digits",
        "brinell_ml.data",
        (("test_size", "float", True), ("seed", "int", True)),
        "Dataset",
    ),
    TaskSignature(
        "train", "brinell_ml.models", (("data", "Dataset", False), ("C", "float", True)), "Model"
    ),
    TaskSignature(
        "fgsm",
        "brinell_ml.attacks",
        (("model", "Model", False), ("data", "Dataset", False), ("eps", "float", False)),
        "AttackResult",
    ),
    TaskSignature(
        "pgd",
        "brinell_ml.attacks",
        (("model", "Model", False), ("data", "Dataset", False), ("eps", "float", False)),
        "AttackResult",
    ),
    TaskSignature(
        "evaluate_attack",
        "brinell_ml.metrics",
        (("model", "Model", False), ("result", "AttackResult", False)),
        "dict",
    ),
    TaskSignature("count", "m", (("n", "int", False),), "int"),
    TaskSignature("scale", "m", (("x", "float", False),), "float"),
    TaskSignature(
        "label",
        "m",
        (
            ("text", "str", False),
            ("tags", "list[str]", True),
            ("opts", "dict[str, Any]", True),
            ("flag", "bool", True),
            ("maybe", "Optional[int]", True),
            ("u", "int | None", True),
        ),
        "str",
    ),
    TaskSignature(
        "anything",
        "m",
        (("x", "", False), ("y", "Any", True), ("z", "object", True), ("model", "Model", True)),
        "",
    ),
    TaskSignature("pairs", "m", (), "list[int]"),
    TaskSignature("mapping", "m", (), "dict[str, Any]"),
]
TASKS = {s.qualified_name: s for s in SIGNATURES}
PARAMS = {
    "test_size": "float",
    "seed": "int",
    "eps": "float",
    "name": "string",
    "data_dir": "path",
    "count": "int",
}

EXAMPLE = """\
steps:
  data:
    task: load_digits
    args: {test_size: $test_size, seed: $seed}
  model:
    task: train
    args: {data: $data, C: 1.0}
  fgsm:
    task: brinell_ml.attacks.fgsm
    args: {model: $model, data: $data, eps: $eps}
  pgd:
    task: pgd
    args: {model: $model, data: $data, eps: $eps}
  report:
    task: evaluate_attack
    args: {model: $model, result: $fgsm}
    after: [pgd]
"""


def problems_of(
    text: str, params: dict[str, str] | None = None, tasks: dict[str, TaskSignature] | None = None
) -> list[str]:
    return validate(
        parse(text), PARAMS if params is None else params, TASKS if tasks is None else tasks
    )


def only(problems: list[str], *needles: str) -> str:
    """The one problem that mentions every needle."""
    hits = [p for p in problems if all(n in p for n in needles)]
    assert len(hits) == 1, (needles, problems)
    return hits[0]


# --- parse ------------------------------------------------------------------------------


def test_parse_example() -> None:
    graph = parse(EXAMPLE)
    assert list(graph.steps) == ["data", "model", "fgsm", "pgd", "report"]
    assert graph.steps["model"] == Step("model", "train", {"data": Ref("data"), "C": 1.0}, [])
    assert graph.steps["report"].after == ["pgd"]
    assert graph.name == ""


def test_parse_references_nested_and_escaped() -> None:
    graph = parse("""
name: demo
steps:
  s:
    task: t
    args:
      items: [$a, {k: $b, lit: "$$money"}, 3]
      cost: "$$5"
      plain: "a $b c"
      dollar: "$$"
""")
    assert graph.name == "demo"
    assert graph.steps["s"].args == {
        "items": [Ref("a"), {"k": Ref("b"), "lit": "$money"}, 3],
        "cost": "$5",
        "plain": "a $b c",
        "dollar": "$",
    }


def test_parse_lists_every_structural_problem() -> None:
    with pytest.raises(GraphError) as err:
        parse("""
steps:
  a: 3
  b: {task: 5, args: [1], foo: 1, after: x}
  c: {args: {x: "$not a ref"}, after: [zz, a, a]}
  d: {task: ok, args: {1: 2}}
extra: 1
""")
    problems = err.value.problems
    only(problems, "extra")
    only(problems, "'a'", "mapping")
    only(problems, "'b'", "'foo'")
    only(problems, "'b'", "`task`")
    only(problems, "'b'", "`args`")
    only(problems, "'b'", "`after`")
    only(problems, "'c'", "`task`")
    only(problems, "'c'", "'x'", "$$")
    only(problems, "'c'", "'zz'")
    only(problems, "'c'", "twice")
    only(problems, "'d'", "identifier")
    assert len(problems) == 11, problems
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("steps: [", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
        ("name: x\n", "no steps"),
        ("steps: {}\n", "no steps"),
        ("steps: {'bad name': {task: t}}\n", "step name"),
    ],
)
def test_parse_rejects_documents(text: str, needle: str) -> None:
    with pytest.raises(GraphError) as err:
        parse(text)
    assert any(needle in p for p in err.value.problems), err.value.problems


# --- validate ---------------------------------------------------------------------------


def test_valid_graph_has_no_problems() -> None:
    assert problems_of(EXAMPLE) == []


def test_qualified_and_short_names() -> None:
    text = "steps: {d: {task: brinell_ml.data.load_digits}, e: {task: load_digits}}"
    assert problems_of(text) == []


def test_unknown_task_suggests_the_closest_or_lists_tasks() -> None:
    problems = problems_of("steps: {d: {task: load_digit}, e: {task: zzzzzz}}")
    assert "did you mean 'load_digits'" in only(problems, "step 'd'", "'load_digit'")
    listed = only(problems, "step 'e'", "'zzzzzz'")
    assert "tasks:" in listed and "fgsm" in listed and "train" in listed
    assert "no tasks are available" in only(
        problems_of("steps: {d: {task: x}}", tasks={}), "step 'd'", "'x'"
    )


def test_ambiguous_short_name_needs_the_qualified_name() -> None:
    other = TaskSignature("fgsm", "other_plugin.attacks", (("model", "", False),), "")
    tasks = {**TASKS, other.qualified_name: other}
    problems = problems_of("steps: {a: {task: fgsm, args: {model: 1}}}", tasks=tasks)
    message = only(problems, "step 'a'", "ambiguous")
    assert "brinell_ml.attacks.fgsm" in message and "other_plugin.attacks.fgsm" in message
    assert (
        problems_of("steps: {a: {task: other_plugin.attacks.fgsm, args: {model: 1}}}", tasks=tasks)
        == []
    )


def test_unknown_and_ambiguous_references() -> None:
    problems = problems_of("""
steps:
  data: {task: load_digits, args: {seed: $sed}}
  count: {task: count, args: {n: 1}}
  other: {task: count, args: {n: $count}}
  model: {task: train, args: {data: [$dat]}}
""")
    assert "did you mean 'seed'" in only(problems, "step 'data'", "'seed'", "$sed")
    only(problems, "step 'model'", "'data'", "$dat", "neither")
    only(problems, "step 'other'", "'n'", "both a parameter and a step")
    assert len(problems) == 3, problems


def test_arguments_not_taken_and_required_inputs_missing() -> None:
    problems = problems_of("""
steps:
  data: {task: load_digits, args: {seed: 1, sede: 2}}
  model: {task: train, args: {C: 2.0}}
""")
    assert "did you mean 'seed'" in only(problems, "step 'data'", "'sede'", "not an input")
    only(problems, "step 'model'", "'data'", "missing")
    assert len(problems) == 2, problems


def test_self_reference() -> None:
    problems = problems_of("""
steps:
  a: {task: count, args: {n: $a}}
  b: {task: count, args: {n: 1}, after: [b]}
""")
    only(problems, "step 'a'", "'n'", "itself")
    only(problems, "step 'b'", "`after`", "itself")
    assert not any("cycle" in p for p in problems)


def test_cycle_is_named_in_order() -> None:
    problems = problems_of("""
steps:
  start: {task: count, args: {n: 1}}
  a: {task: scale, args: {x: $c}}
  b: {task: scale, args: {x: $a}}
  c: {task: scale, args: {x: $b}}
""")
    assert only(problems, "cycle").startswith("steps form a cycle: a → b → c → a")


def test_cycle_through_after() -> None:
    problems = problems_of("""
steps:
  x: {task: count, args: {n: 1}, after: [y]}
  y: {task: scale, args: {x: $x}}
""")
    assert "x → y → x" in only(problems, "cycle")


TYPE_CASES = [
    # (step args, task, problem expected)
    ("{n: $count}", "count", False),  # int -> int
    ("{x: $count}", "scale", False),  # int -> float
    ("{x: $eps}", "scale", False),  # float -> float
    ("{n: $eps}", "count", True),  # float -> int
    ("{n: $name}", "count", True),  # string -> int
    ("{x: $name}", "scale", True),  # string -> float
    ("{text: $name}", "label", False),  # string -> str
    ("{text: $data_dir}", "label", False),  # path -> str
    ("{text: $count}", "label", True),  # int -> str
    ("{text: a, maybe: $count}", "label", False),  # int -> Optional[int]
    ("{text: a, u: $count}", "label", False),  # int -> int | None
    ("{text: a, u: $eps}", "label", True),  # float -> int | None
    ("{x: $name, y: $eps, z: $count}", "anything", False),  # anything -> unannotated/Any/object
    ("{x: 1, model: $name}", "anything", False),  # a class annotation: not certainly wrong
    ("{n: 3}", "count", False),
    ("{n: 3.5}", "count", True),
    ("{x: 3}", "scale", False),
    ("{x: abc}", "scale", True),
    ("{text: 3}", "label", True),
    ("{text: a, tags: [x, y], opts: {k: 1}, flag: true}", "label", False),
    ("{text: a, tags: {k: 1}}", "label", True),
    ("{text: a, opts: [1]}", "label", True),
    ("{text: a, flag: 1}", "label", True),
    ("{text: a, maybe: null}", "label", False),
    ("{n: null}", "count", True),
]


@pytest.mark.parametrize("args, task_name, expected", TYPE_CASES)
def test_parameter_and_literal_types(args: str, task_name: str, expected: bool) -> None:
    problems = problems_of(f"steps: {{s: {{task: {task_name}, args: {args}}}}}")
    if expected:
        assert len(problems) == 1, problems
        assert "step 's'" in problems[0] and "argument '" in problems[0]
        assert f"task {task_name!r} takes" in problems[0]
    else:
        assert problems == []


@pytest.mark.parametrize(
    "upstream, consumer, expected",
    [
        ("count", "{n: $up}", False),  # int -> int
        ("count", "{x: $up}", False),  # int -> float
        ("scale", "{n: $up}", True),  # float -> int
        ("label", "{text: $up}", False),  # str -> str
        ("label", "{text: a, u: $up}", True),  # str -> int | None
        ("count", "{text: a, u: $up}", False),  # int -> int | None
        ("anything", "{n: $up}", False),  # unannotated output
        ("train", "{x: $up}", False),  # a class (Model) vs float: not certainly wrong
        ("pairs", "{text: a, tags: $up}", False),  # list[int] -> list[str]: base types agree
        ("mapping", "{n: $up}", True),  # dict[str, Any] -> int
        ("evaluate_attack", "{text: a, opts: $up}", False),  # dict -> dict[str, Any]
    ],
)
def test_step_output_types(upstream: str, consumer: str, expected: bool) -> None:
    up = TASKS[next(k for k in TASKS if k.endswith("." + upstream))]
    up_args = ", ".join(f"{name}: 1" for name, _, has_default in up.inputs if not has_default)
    consumer_task = {"n": "count", "x": "scale", "text": "label"}[consumer[1:].split(":")[0]]
    text = f"""
steps:
  up: {{task: {upstream}, args: {{{up_args}}}}}
  down: {{task: {consumer_task}, args: {consumer}}}
"""
    problems = [p for p in problems_of(text, params={}) if "step 'down'" in p]
    if expected:
        assert len(problems) == 1, problems
        assert "argument '" in problems[0] and "$up is the output of task" in problems[0]
    else:
        assert problems == []


def test_any_keyword_task_takes_any_argument() -> None:
    sig = TaskSignature("kw", "m", (("a", "int", False),), "int", any_keyword=True)
    assert (
        validate(parse("steps: {s: {task: kw, args: {a: 1, whatever: 2}}}"), {}, {"m.kw": sig})
        == []
    )
    problems = validate(parse("steps: {s: {task: kw, args: {whatever: 2}}}"), {}, {"m.kw": sig})
    only(problems, "step 's'", "'a'", "missing")


def test_task_signature_from_task_info() -> None:
    def f(a: int, b: str = "x") -> float:
        return 1.0

    sig = TaskSignature.from_task_info(describe(f, "f"))
    assert sig.inputs == (("a", "int", False), ("b", "str", True))
    assert sig.output == "float" and sig.name == "f" and sig.module == __name__


# --- topological order ------------------------------------------------------------------


def test_topological_levels() -> None:
    assert topological_order(parse(EXAMPLE)) == [["data"], ["model"], ["fgsm", "pgd"], ["report"]]
    graph = Graph(
        {
            "a": Step("a", "t"),
            "b": Step("b", "t", after=["a"]),
            "c": Step("c", "t", {"x": [{"y": Ref("b")}], "p": Ref("param")}),
        }
    )
    assert topological_order(graph) == [["a"], ["b"], ["c"]]


def test_topological_order_refuses_a_cycle() -> None:
    graph = parse("steps: {a: {task: t, args: {x: $b}}, b: {task: t, args: {x: $a}}}")
    with pytest.raises(GraphError, match="a → b → a"):
        topological_order(graph)


# --- running through a real Prefect server ----------------------------------------------


@task(name="graph_test_add")
def g_add(a: int, b: int = 0) -> int:
    return a + b


@task(name="graph_test_slow")
def g_slow(x: int, factor: int) -> dict[str, Any]:
    start = time.monotonic()
    time.sleep(0.5)
    return {"value": x * factor, "start": start, "end": time.monotonic()}


@task(name="graph_test_join")
def g_join(parts: list[dict[str, Any]], label: str) -> str:
    return f"{label}={sum(p['value'] for p in parts)}"


@task(name="graph_test_kw")
def g_kw(a: int, *rest: int, **extra: Any) -> int:
    return a + len(extra)


@task(name="graph_test_boom")
def g_boom(x: int) -> int:
    raise RuntimeError(f"boom {x}")


RUN_GRAPH = """\
name: graph-test
steps:
  base: {task: graph_test_add, args: {a: $n, b: 1}}
  left: {task: graph_test_slow, args: {x: $base, factor: 2}}
  right: {task: graph_test_slow, args: {x: $base, factor: 3}}
  total: {task: graph_test_join, args: {parts: [$left, $right], label: $label}}
  last: {task: graph_test_add, args: {a: $base}, after: [total]}
  kw: {task: graph_test_kw, args: {a: $base, x: 1, y: [2]}}
"""
RUN_TASKS = {t.name: t for t in (g_add, g_slow, g_join, g_boom, g_kw)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real `prefect server start` for this module (a fresh one answers in ≈20 s)."""
    home = tmp_path_factory.mktemp("prefect")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILE")}
    env.update(
        PREFECT_HOME=str(home),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
    )
    if not os.path.isdir(env.get("HOME", "")):
        env["HOME"] = str(home)
    port = _free_port()
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-ui",
                "--analytics-off",
            ],
            env=env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while not _healthy(f"{url}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (home / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"the Prefect server did not start:\n{tail}")
            time.sleep(0.25)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass


@pytest.fixture
def prefect_api(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server


def test_run_steps_concurrently(prefect_api: str) -> None:
    done: list[str] = []
    results = run(
        parse(RUN_GRAPH),
        {"n": "4", "label": "sum"},
        RUN_TASKS,
        types={"n": "int", "label": "string"},
        on_step_done=lambda step, _: done.append(step),
    )
    assert list(results) == ["base", "left", "right", "total", "last", "kw"]
    assert results["base"] == 5
    assert results["left"]["value"] == 10 and results["right"]["value"] == 15
    assert results["total"] == "sum=25"
    assert results["last"] == 5
    assert results["kw"] == 7  # **extra takes any argument name
    assert sorted(done) == sorted(results) and done[0] == "base"
    assert done.index("total") > max(done.index("left"), done.index("right"))
    assert done.index("last") > done.index("total")
    left, right = results["left"], results["right"]
    # Each sleeps 0.5 s: run concurrently, each starts before the other ends (an overlap
    # of their own recorded intervals, whatever the machine's load).
    assert left["start"] < right["end"] and right["start"] < left["end"], (left, right)


def test_run_reports_the_failing_step(prefect_api: str) -> None:
    graph = parse("""
steps:
  a: {task: graph_test_add, args: {a: 1}}
  bad: {task: graph_test_boom, args: {x: $a}}
  after_bad: {task: graph_test_add, args: {a: $bad}}
""")
    with pytest.raises(StepFailedError) as err:
        run(graph, {}, RUN_TASKS)
    assert err.value.step == "bad" and "boom 1" in str(err.value)


def test_run_validates_before_running() -> None:
    graph = parse("steps: {a: {task: graph_test_add, args: {a: $n, c: 1}}}")
    with pytest.raises(GraphError) as err:
        run(graph, {"n": "x"}, RUN_TASKS)  # no types: "x" is a string, `a` takes int
    only(err.value.problems, "step 'a'", "'c'", "not an input")
    only(err.value.problems, "step 'a'", "'a'", "$n")


def test_run_converts_declared_parameter_types() -> None:
    graph = parse("steps: {a: {task: graph_test_add, args: {a: $n}}}")
    with pytest.raises(GraphError, match="'n'.*not an int"):
        run(graph, {"n": "four"}, RUN_TASKS, types={"n": "int"})


# --- main (python -m brinell.graph) ----------------------------------------------------

PLUGIN_OPS = """\
from __future__ import annotations

from brinell import task


@task
def add(a: int, b: int = 0) -> int:
    return a + b
"""

PLUGIN_MORE = """\
from __future__ import annotations

import time

from brinell import task


@task
def scale(x: int, by: float) -> float:
    time.sleep(0.2)
    return x * by


@task
def log_it(value: float) -> str:
    import mlflow

    if mlflow.active_run() is not None:  # the job's run, also in Prefect's worker threads
        mlflow.log_param("value", value)
    return str(value)


@task
def fail(x: float) -> float:
    raise ValueError("no good")
"""

MLPROJECT = """\
name: graphs
entry_points:
  main:
    graph: graphs/flow.yaml
    parameters:
      n: {type: int, default: 1}
      by: {type: float}
  other:
    command: "python x.py"
"""

FLOW = """\
steps:
  base: {task: add, args: {a: $n, b: 1}}
  scaled: {task: scale, args: {x: $base, by: $by}}
  again: {task: plug.ops.add, args: {a: $base}}
  logged: {task: log_it, args: {value: $scaled}}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    pkg = tmp_path / "site" / "plug"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops.py").write_text(PLUGIN_OPS)
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "more.py").write_text(PLUGIN_MORE)
    (pkg / "broken.py").write_text('raise ImportError("needs a package this host lacks")\n')
    (tmp_path / "ep" / "graphs").mkdir(parents=True)
    (tmp_path / "ep" / "MLproject").write_text(MLPROJECT)
    (tmp_path / "ep" / "graphs" / "flow.yaml").write_text(FLOW)
    return tmp_path


def run_main(
    project: Path,
    *args: str,
    parameters: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRINELL_", "MLFLOW_"))}
    env.update(
        PYTHONPATH=str(project / "site"),
        BRINELL_PLUGIN_PACKAGES="plug",
        PREFECT_HOME=str(project / "prefect-home"),
    )
    if parameters is not None:
        env["BRINELL_PARAMETERS"] = json.dumps(parameters)
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "brinell.graph", *args],
        cwd=project / "ep",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_main_runs_the_graph(project: Path, prefect_server: str) -> None:
    proc = run_main(
        project,
        "graphs/flow.yaml",
        "-p",
        "by=2.5",
        parameters={"n": 3, "by": 9},
        extra_env={"PREFECT_API_URL": prefect_server},
    )
    assert proc.returncode == 0, proc.stderr
    done = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert sorted(done) == [
        "step again done",
        "step base done",
        "step logged done",
        "step scaled done",
    ]
    assert done[0] == "step base done" and done[-1] == "step logged done"
    # a pinned plugin module that cannot be imported does not stop a graph that doesn't use it
    assert "warning: plugin module plug.broken could not be imported" in proc.stderr


def test_main_resumes_the_mlflow_run(project: Path, prefect_server: str) -> None:
    from mlflow.tracking import MlflowClient

    tracking = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking)
    run_id = client.create_run("0").info.run_id
    proc = run_main(
        project,
        "graphs/flow.yaml",
        parameters={"n": 1, "by": 0.5},
        extra_env={
            "PREFECT_API_URL": prefect_server,
            "MLFLOW_RUN_ID": run_id,
            "MLFLOW_TRACKING_URI": tracking,
        },
    )
    assert proc.returncode == 0, proc.stderr
    finished = client.get_run(run_id)
    assert finished.data.params == {"value": "1.0"}  # logged from a task's worker thread
    assert [r.info.run_id for r in client.search_runs(["0"])] == [run_id]
    assert finished.info.status == "FINISHED"


def test_main_rejects_an_invalid_graph(project: Path) -> None:
    (project / "ep" / "graphs" / "bad.yaml").write_text(
        "steps: {a: {task: ad, args: {a: $n}}, b: {task: scale, args: {x: $a, by: $n}}}"
    )
    proc = run_main(project, "graphs/bad.yaml", "-p", "n=2")
    assert proc.returncode == 2
    # no MLproject entry names this graph: parameters are strings
    assert "unknown task 'ad' (did you mean 'add'?)" in proc.stderr
    assert "step 'b': argument 'by': parameter $n is of type string" in proc.stderr
    assert "plug.broken could not be imported (ImportError: needs a package" in proc.stderr
    assert "step " not in proc.stdout


def test_main_rejects_bad_parameters(project: Path) -> None:
    proc = run_main(project, "graphs/flow.yaml", parameters={"n": "x"})
    assert proc.returncode == 2
    assert "'n': 'x' is not an int" in proc.stderr
    assert "missing required parameter 'by'" in proc.stderr


def test_main_fails_when_a_step_fails(project: Path, prefect_server: str) -> None:
    (project / "ep" / "graphs" / "fails.yaml").write_text(
        "steps: {a: {task: add, args: {a: 1}}, b: {task: fail, args: {x: $a}}}"
    )
    proc = run_main(project, "graphs/fails.yaml", extra_env={"PREFECT_API_URL": prefect_server})
    assert proc.returncode == 1
    assert "step 'b' failed: ValueError: no good" in proc.stderr
    assert "step a done" in proc.stdout and "step b done" not in proc.stdout


def test_load_plugins_imports_submodules(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import brinell.plugin

    monkeypatch.setattr(brinell.plugin, "_TASKS", {})  # keep this test's tasks to itself
    monkeypatch.syspath_prepend(str(project / "site"))
    monkeypatch.setenv("BRINELL_PLUGIN_PACKAGES", " plug ,")
    with pytest.raises(ImportError, match="plug.broken"):
        load_plugins()
    errors: dict[str, str] = {}
    tasks = load_plugins(errors=errors)
    assert {"add", "scale", "plug.ops.add", "plug.sub.more.scale"} <= set(tasks)
    assert errors == {"plug.broken": "ImportError: needs a package this host lacks"}
    for name in [n for n in sys.modules if n == "plug" or n.startswith("plug.")]:
        monkeypatch.delitem(sys.modules, name)


# --- outputs (what steps returned, shown and logged) -------------------------------------


def test_outputs_keep_scalars_and_dicts_of_scalars() -> None:
    from brinell.graph import outputs

    found = outputs.outputs(
        {
            "report": {"clean_accuracy": 0.9, "n": 300, "note": "ok", "nested": {"x": 1}},
            "total": 45,
            "flag": True,
            "model": object(),
            "values": [1, 2],
            "odd name!": 1.5,
        }
    )
    assert found == {
        "report.clean_accuracy": 0.9,
        "report.n": 300,
        "report.note": "ok",
        "total": 45,
        "flag": True,
        "odd name_": 1.5,
    }
    assert outputs.lines({"total": 45, "note": "ok"}) == [
        "outputs:",
        "  total = 45",
        "  note = 'ok'",
    ]
    assert outputs.lines({}) == []
