"""Container image references, as the control plane accepts them and the agent pulls them.

One rule for both sides: the MLproject's `docker_env.image`, a submit's `image` and an agent's
default images are all checked here.
"""

from __future__ import annotations

import re

MAX_REFERENCE_CHARS = 255

# Docker's reference grammar (distribution/reference), without the rarely used parts:
# [host[:port]/]path[:tag][@sha256:hex], path components lower case.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?/)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?P<name>{_HOST}?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def reference_problem(ref: str) -> str:
    """Why ``ref`` is not an image reference ("" when it is one)."""
    if len(ref) > MAX_REFERENCE_CHARS:
        return f"an image reference is at most {MAX_REFERENCE_CHARS} characters"
    if not _REFERENCE.match(ref):
        shown = ref if len(ref) <= 80 else ref[:79] + "…"
        return (
            f"{shown!r} is not an image reference: use [HOST[:PORT]/]NAME[:TAG][@sha256:HEX] "
            "with a lower-case name"
        )
    return ""


def split(ref: str) -> tuple[str, str]:
    """(repository, tag or digest) as the docker SDK's pull takes them; the tag defaults to
    `latest`. ``ref`` must be valid."""
    match = _REFERENCE.match(ref)
    if match is None:
        raise ValueError(reference_problem(ref))
    if match["digest"]:
        return match["name"], match["digest"]
    return match["name"], match["tag"] or "latest"


def registry(ref: str) -> str:
    """The registry host a reference names (`docker.io` when it names none)."""
    first, sep, _rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"
