"""MLproject parsing, parameter validation (MLflow semantics) and command building."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from brinell import mlproject

DOC = """
name: demo
entry_points:
  main:
    parameters:
      lr: {type: float, default: 0.1}
      epochs: {type: int, default: 3}
      name: string
      data: {type: path, default: ./data}
      source: {type: uri, default: "s3://bucket/x"}
    command: "python train.py --lr {lr} --epochs {epochs} --name {name} --data {data}"
  other:
    command: "echo hi"
"""


def test_parse_types_and_defaults() -> None:
    project = mlproject.parse(DOC)
    assert project.name == "demo"
    main = project.entry("main")
    assert main is not None
    types = {p.name: (p.type, p.default) for p in main.parameters}
    assert types == {
        "lr": ("float", "0.1"),
        "epochs": ("int", "3"),
        "name": ("string", None),
        "data": ("path", "./data"),
        "source": ("uri", "s3://bucket/x"),
    }
    assert main.parameter("name") is not None and main.parameter("name").required  # type: ignore[union-attr]
    assert project.entry("other") is not None


def test_resolve_fills_defaults_and_keeps_given() -> None:
    project = mlproject.parse(DOC)
    got = mlproject.resolve(project, "main", {"name": "x", "lr": "1e-3"})
    assert got == {
        "lr": "1e-3",
        "epochs": "3",
        "name": "x",
        "data": "./data",
        "source": "s3://bucket/x",
    }


def test_resolve_names_every_problem() -> None:
    project = mlproject.parse(DOC)
    with pytest.raises(mlproject.MLprojectError) as info:
        mlproject.resolve(
            project, "main", {"lr": "fast", "epochs": "2.5", "nmae": "typo", "data": " "}
        )
    problems = info.value.problems
    assert len(problems) == 5, problems
    text = str(info.value)
    for needle in (
        "'lr'",
        "'epochs'",
        "unknown parameter 'nmae' (did you mean 'name'?)",
        "missing required parameter 'name'",
        "empty path",
    ):
        assert needle in text


def test_an_unknown_parameter_without_a_close_one_lists_the_declared() -> None:
    project = mlproject.parse(DOC)
    with pytest.raises(mlproject.MLprojectError) as info:
        mlproject.resolve(project, "main", {"name": "x", "zzz": "1"})
    assert info.value.problems == [
        "unknown parameter 'zzz' (declared: data, epochs, lr, name, source)"
    ]


@pytest.mark.parametrize(
    "value,ok", [("1", True), ("-3", True), ("1.0", False), ("x", False), ("", False)]
)
def test_int_values(value: str, ok: bool) -> None:
    spec = mlproject.ParameterSpec("n", "int")
    assert (mlproject.check_value(spec, value) is None) == ok


@pytest.mark.parametrize(
    "value,ok",
    [("1", True), ("1e-3", True), ("-.5", True), ("inf", False), ("nan", False), ("one", False)],
)
def test_float_values(value: str, ok: bool) -> None:
    spec = mlproject.ParameterSpec("x", "float")
    assert (mlproject.check_value(spec, value) is None) == ok


def test_unknown_entry() -> None:
    with pytest.raises(mlproject.MLprojectError, match="entry 'nope'"):
        mlproject.resolve(mlproject.parse(DOC), "nope", {})


def test_bad_documents_list_every_problem() -> None:
    with pytest.raises(mlproject.MLprojectError) as info:
        mlproject.parse("""
entry_points:
  a:
    parameters:
      x: {type: tensor}
      y: {type: int, default: nope}
    command: "run {x} {z}"
  b: {}
""")
    text = str(info.value)
    assert "'tensor'" in text and "default of" in text and "{z}" in text and "'b'" in text
    for bad in ("", "[1, 2]", "name: x", "entry_points: [unclosed"):
        with pytest.raises(mlproject.MLprojectError):
            mlproject.parse(bad)


def test_command_quotes_values_against_injection() -> None:
    project = mlproject.parse(DOC)
    main = project.entry("main")
    assert main is not None
    params = mlproject.resolve(project, "main", {"name": "x; rm -rf / #"})
    cmd = mlproject.build_command(main, params)
    argv = shlex.split(cmd)
    assert argv[argv.index("--name") + 1] == "x; rm -rf / #"
    assert argv[:2] == ["python", "train.py"]


def test_values_that_could_not_run_are_refused_and_not_echoed_whole() -> None:
    project = mlproject.parse(DOC)

    def problems(**given: str) -> list[str]:
        with pytest.raises(mlproject.MLprojectError) as info:
            mlproject.resolve(project, "main", {"name": "x", **given})
        return info.value.problems

    assert problems(name="a\x00b") == ["parameter 'name': a NUL character is not allowed"]
    assert problems(lr="inf") == ["parameter 'lr': infinity is not allowed"]
    assert problems(lr="-Infinity") == ["parameter 'lr': infinity is not allowed"]
    huge = "9" * 100_000
    (msg,) = problems(epochs=huge + "x")
    assert msg.startswith("parameter 'epochs': '9999") and msg.endswith("… is not an int")
    assert len(msg) < 100  # never the whole input
    (unknown,) = problems(**{"z" * 5000: "1"})
    assert len(unknown) < 200
    # One argument of `sh -c` is at most 128 KiB: a longer command is refused at submit.
    (long,) = problems(name="n" * 60_000, data="d" * 60_000)
    assert "more than the 100000 a process can be given" in long
    assert mlproject.resolve(project, "main", {"name": "n" * 40_000})["name"] == "n" * 40_000


# -- shell injection through placeholders ---------------------------------------------


def _with_command(template: str) -> str:
    head = "entry_points:\n  main:\n    parameters: {name: string}\n"
    return head + f"    command: {json.dumps(template)}\n"


INJECTIONS = [
    "a; touch F; echo ",
    "a'; touch F; echo '",
    'a"; touch F; echo "',
    "$(touch F)",
    "`touch F`",
    "a\ntouch F",
    "a' \"$(touch F)\" '",
]


@pytest.mark.parametrize(
    "template",
    [
        "echo '{name}'",
        'echo "{name}"',
        "echo \"a '{name}' b\"",
        "echo 'x'\"{name}\"",
        "echo `echo {name}`",
    ],
)
def test_placeholders_inside_quotes_are_refused(template: str) -> None:
    doc = _with_command(template)
    with pytest.raises(mlproject.MLprojectError, match="inside (single|double|backtick) quotes"):
        mlproject.parse(doc)


def test_numeric_placeholders_may_stand_in_quotes() -> None:
    doc = (
        "entry_points:\n  main:\n    parameters: {n: int, f: float}\n"
        "    command: \"sh -c 'sleep {f}; exit {n}'\"\n"
    )
    assert mlproject.parse(doc).entries[0].command == "sh -c 'sleep {f}; exit {n}'"


@pytest.mark.parametrize(
    "template", ["echo {name}", "echo $(echo {name})", "echo \\'{name}", 'x={name}; echo "$x"']
)
@pytest.mark.parametrize("value", INJECTIONS)
def test_unquoted_placeholders_cannot_break_out(template: str, value: str, tmp_path: Path) -> None:
    doc = _with_command(template)
    entry = mlproject.parse(doc).entries[0]
    command = mlproject.build_command(entry, {"name": value})
    run = subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True, text=True)
    assert not (tmp_path / "F").exists(), (command, run.stdout)
    assert value.replace("\n", " ").split()[0].strip("'\"") in run.stdout.replace("\n", " ")
