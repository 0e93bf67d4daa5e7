"""Resource names (`experiments/{id}`, `jobs/{id}`, ...) and id rules."""

from __future__ import annotations

import re
import uuid

from brinell.ids import AGENT_ID_RE as AGENT_ID_RE
from brinell.ids import JOB_ID_RE as JOB_ID_RE
from brinell.mlproject import ID_RE as ID_RE
from brinell.mlproject import shown

from .errors import InvalidArgument

QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TOKEN_ID_RE = re.compile(r"^tok-[0-9a-f]{12}$")


def check_id(value: str, what: str, pattern: re.Pattern[str] = ID_RE, *, field: str) -> str:
    if not pattern.match(value):
        raise InvalidArgument(
            f"{what} id {shown(value)} is invalid: use 1-63 characters of lower-case letters, "
            "digits and '-', starting with a letter"
            if pattern is ID_RE
            else f"{what} id {shown(value)} is invalid",
            field=field,
        )
    return value


def parse(
    name: str, collection: str, what: str, pattern: re.Pattern[str] = ID_RE, *, field: str = "name"
) -> str:
    """``collection/{id}`` -> id; a bare id is accepted too, for humans typing names.

    ``field`` is the request field the name came in (``name`` for Get/Update/Delete)."""
    prefix = collection + "/"
    raw = name[len(prefix) :] if name.startswith(prefix) else name
    if not raw:
        raise InvalidArgument(f"{what} name is required (`{collection}/{{id}}`)", field=field)
    if not pattern.match(raw):
        raise InvalidArgument(
            f"{what} name {shown(name)} is malformed (want `{collection}/{{id}}`)", field=field
        )
    return raw


def experiment_id(name: str, field: str = "name") -> str:
    return parse(name, "experiments", "experiment", field=field)


def entry_point_id(name: str, field: str = "name") -> str:
    return parse(name, "entryPoints", "entry point", field=field)


def job_id(name: str, field: str = "name") -> str:
    return parse(name, "jobs", "job", JOB_ID_RE, field=field)


def group_id(name: str, field: str = "name") -> str:
    return parse(name, "groups", "group", field=field)


def agent_id(name: str, field: str = "name") -> str:
    return parse(name, "agents", "agent", AGENT_ID_RE, field=field)


def check_digest(digest: str, field: str = "digest") -> str:
    if not DIGEST_RE.match(digest):
        raise InvalidArgument(
            f"digest {shown(digest)} is malformed (want `sha256:<64 hex digits>`)", field=field
        )
    return digest


def revision_name(name: str) -> tuple[str, str]:
    """`entryPoints/{id}/revisions/{digest}` -> (id, digest)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "entryPoints" or parts[2] != "revisions":
        raise InvalidArgument(
            f"revision name {shown(name)} is malformed "
            "(want `entryPoints/{id}/revisions/{digest}`)",
            field="name",
        )
    return check_id(parts[1], "entry point", field="name"), check_digest(parts[3], field="name")


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# Bounds on what is stored and listed: a page of the largest items still fits a response.
MAX_DESCRIPTION_CHARS = 10_000
MAX_LABELS = 32
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 255


def text_problems(value: str, what: str, limit: int, *, field: str) -> list[tuple[str, str]]:
    """(field, problem) when ``value`` is over ``limit`` characters."""
    return [(field, f"{what} is over {limit} characters")] if len(value) > limit else []


def label_problems(labels: dict[str, str], *, field: str) -> list[tuple[str, str]]:
    """(field, problem) pairs for too many labels and for each bad one (shown cut short)."""
    if len(labels) > MAX_LABELS:
        return [(field, f"at most {MAX_LABELS} labels (got {len(labels)})")]
    return [
        (
            field,
            f"label {shown(k)} is invalid (key 1-{MAX_LABEL_KEY_CHARS}, value "
            f"0-{MAX_LABEL_VALUE_CHARS} characters)",
        )
        for k, v in labels.items()
        if not k or len(k) > MAX_LABEL_KEY_CHARS or len(v) > MAX_LABEL_VALUE_CHARS
    ]
