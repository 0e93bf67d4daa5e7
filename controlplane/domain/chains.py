"""Job chains: a job that depends on others waits in PENDING until they all succeed, then is
queued with ``{deps.ALIAS.FIELD}`` placeholders in its parameters filled in from them.

A dependency must exist when its dependent is submitted and ``depends_on`` never changes, so
no chain can form a cycle. The rules here are pure; the scheduler applies them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from brinell.mlproject import shown

from .models import Job
from .states import JobState

MAX_DEPENDENCIES = 32
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# {deps.ALIAS.run_id} | {deps.ALIAS.job} | {deps.ALIAS.model} | {deps.ALIAS.model.NAME}
PLACEHOLDER = re.compile(r"\{deps\.([^.{}]*)\.([^.{}]*)(?:\.([^{}]*))?\}")
FIELDS = ("run_id", "job", "model")


@dataclass(frozen=True)
class Ref:
    alias: str
    field: str
    name: str = ""  # the model's name, for model.NAME

    def __str__(self) -> str:
        return (
            "{deps." + self.alias + "." + self.field + (f".{self.name}" if self.name else "") + "}"
        )


def refs(value: str) -> list[Ref]:
    return [Ref(a, f, n or "") for a, f, n in PLACEHOLDER.findall(value)]


def problems(depends_on: Mapping[str, str], parameters: Mapping[str, str]) -> list[str]:
    """What is wrong with the aliases and the placeholders that use them (the jobs are
    checked against the database by the caller)."""
    out: list[str] = []
    if len(depends_on) > MAX_DEPENDENCIES:
        out.append(f"at most {MAX_DEPENDENCIES} dependencies")
    for alias in depends_on:
        if not ALIAS_RE.match(alias):
            out.append(
                f"dependency alias {shown(alias)} is invalid: use a lower-case letter, then up "
                "to 31 of [a-z0-9_]"
            )
    for key, value in parameters.items():
        for ref in refs(value):
            if ref.alias not in depends_on:
                out.append(f"parameter {shown(key)}: {ref} names no dependency in depends_on")
            elif ref.field not in FIELDS or (ref.name and ref.field != "model"):
                out.append(
                    f"parameter {shown(key)}: {ref} is not one of {{deps.{ref.alias}.run_id}}, "
                    f"{{deps.{ref.alias}.job}}, {{deps.{ref.alias}.model}} or "
                    f"{{deps.{ref.alias}.model.NAME}}"
                )
    return out


def verdict(job: Job, deps: Mapping[str, Job | None]) -> tuple[JobState, str] | None:
    """What becomes of a PENDING job given its dependencies now: QUEUED when all succeeded,
    CANCELLED or FAILED (with why) when one did not, None while some still run."""
    for alias, dep_id in sorted(job.depends_on.items()):
        dep = deps.get(dep_id)
        if dep is None:
            return JobState.FAILED, f"dependency {alias} (jobs/{dep_id}) no longer exists"
        if dep.state.is_final and dep.state != JobState.SUCCEEDED:
            why = f"dependency {alias} (jobs/{dep_id}) ended {dep.state.value}"
            if dep.state_reason:
                why += f": {dep.state_reason[:300]}"
            cancelled = dep.state == JobState.CANCELLED
            return (JobState.CANCELLED if cancelled else JobState.FAILED), why
    if all(
        (d := deps.get(i)) is not None and d.state == JobState.SUCCEEDED
        for i in job.depends_on.values()
    ):
        return JobState.QUEUED, ""
    return None


def waiting_for(job: Job, deps: Mapping[str, Job | None]) -> str:
    """The PENDING job's reason: which dependencies it still waits on."""
    left = [
        f"{alias} (jobs/{dep_id})"
        for alias, dep_id in sorted(job.depends_on.items())
        if (d := deps.get(dep_id)) is None or d.state != JobState.SUCCEEDED
    ]
    return "waiting for " + ", ".join(left)


def fill(
    parameters: Mapping[str, str],
    depends_on: Mapping[str, str],
    deps: Mapping[str, Job | None],
    models: Mapping[str, list[tuple[str, str]]],
) -> tuple[dict[str, str], str]:
    """The parameters with every placeholder replaced, and "" — or the parameters unchanged
    and why one cannot be filled (``models``: run id -> its registered versions)."""
    out: dict[str, str] = {}
    for key, value in parameters.items():
        problem = ""

        def one(match: re.Match[str], key: str = key) -> str:
            nonlocal problem
            ref = Ref(match[1], match[2], match[3] or "")
            dep = deps.get(depends_on.get(ref.alias, ""))
            if dep is None:
                problem = f"parameter {key!r}: {ref}: no such dependency"
                return match[0]
            if ref.field == "job":
                return f"jobs/{dep.id}"
            if not dep.mlflow_run_id:
                problem = f"parameter {key!r}: {ref}: jobs/{dep.id} has no MLflow run"
                return match[0]
            if ref.field == "run_id":
                return dep.mlflow_run_id
            versions = [
                v for v in models.get(dep.mlflow_run_id, []) if not ref.name or v[0] == ref.name
            ]
            if len(versions) != 1:
                which = f"model {ref.name!r}" if ref.name else "model"
                problem = (
                    f"parameter {key!r}: {ref}: jobs/{dep.id}'s run has "
                    f"{len(versions)} registered versions of a {which}, not one"
                )
                return match[0]
            return f"models:/{versions[0][0]}/{versions[0][1]}"

        out[key] = PLACEHOLDER.sub(one, value)
        if problem:
            return dict(parameters), problem
    return out, ""


def wants_models(parameters: Mapping[str, str]) -> set[str]:
    """Aliases whose registered models the placeholders use."""
    return {r.alias for v in parameters.values() for r in refs(v) if r.field == "model"}
