"""The small `key=value key2=value2` filter language of List methods."""

from __future__ import annotations

from . import names
from .errors import InvalidArgument
from .models import JobFilter
from .states import JobState


def terms(
    text: str, allowed: set[str], label_prefix: bool = False, problems: list[str] | None = None
) -> list[tuple[str, str]]:
    """Splits a filter into (key, value) terms, naming every bad one.

    With ``problems`` given, they are appended there for the caller to raise with its own.
    """
    out: list[tuple[str, str]] = []
    raise_here = problems is None
    problems = [] if problems is None else problems
    for term in text.split():
        key, sep, value = term.partition("=")
        if not sep or not key or not value:
            problems.append(f"filter term {term!r} is not `key=value`")
        elif key in allowed or (label_prefix and key.startswith("labels.") and len(key) > 7):
            out.append((key, value))
        else:
            extra = ", labels.KEY" if label_prefix else ""
            problems.append(
                f"filter key {key!r} is unknown (known: {', '.join(sorted(allowed))}{extra})"
            )
    if problems and raise_here:
        raise InvalidArgument(problems, field="filter")
    return out


def labels_filter(text: str) -> dict[str, str]:
    return {k[7:]: v for k, v in terms(text, set(), label_prefix=True)}


def job_filter(text: str) -> JobFilter:
    f = JobFilter()
    problems: list[str] = []
    keys = {"state", "experiment", "entry_point", "queue", "agent"}
    for key, value in terms(text, keys, problems=problems):
        try:
            if key == "state":
                for s in value.split(","):
                    try:
                        f.states.append(JobState(s.upper().removeprefix("JOB_STATE_")))
                    except ValueError:
                        problems.append(f"filter state {s!r} is not a job state")
            elif key == "experiment":
                f.experiment_id = names.experiment_id(value)
            elif key == "entry_point":
                f.entry_point_id = names.entry_point_id(value)
            elif key == "queue":
                f.queue = value
            elif key == "agent":
                f.agent_id = names.agent_id(value)
        except InvalidArgument as exc:
            problems.extend(exc.problems)
    if problems:
        raise InvalidArgument(problems, field="filter")
    return f
