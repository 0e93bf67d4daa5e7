"""The registry's names, URIs and artifact paths (pure parsing, no MLflow)."""

from __future__ import annotations

import pytest

from brinell.controlplane.domain.errors import InvalidArgument
from brinell.controlplane.domain.registry import (
    artifact_path,
    check_alias,
    parse_uri,
    version_name,
)


def test_artifact_paths_stay_inside_the_root() -> None:
    assert artifact_path("") == ""
    assert artifact_path("model") == "model"
    assert artifact_path("./a//b/./c/") == "a/b/c"
    for bad in ("/etc/passwd", "..", "a/../b", "a/..", "a\\b", "C:/x", "a\x00b"):
        with pytest.raises(InvalidArgument):
            artifact_path(bad)


def test_version_names() -> None:
    assert version_name("models/m/versions/3") == ("m", "3", "")
    assert version_name("models/m@champion") == ("m", "", "champion")
    for bad in (
        "m/versions/3",
        "models/m",
        "models/m/versions/0",
        "models/m/versions/x",
        "models/M/versions/1",
        "models/m@",
        "models/m@a b",
        "models/m/versions/1/x",
    ):
        with pytest.raises(InvalidArgument):
            version_name(bad)


def test_model_uris() -> None:
    assert parse_uri("models:/m/3") == ("m", "3", "")
    assert parse_uri("models:/m@prod") == ("m", "", "prod")
    assert parse_uri("models:/m/latest") == ("m", "latest", "")
    for bad in (
        "models:/m",
        "models:/m/",
        "models:/m/3/x",
        "models:m/1",
        "runs:/r/model",
        "models:/M/1",
        "models:/m@",
    ):
        with pytest.raises(InvalidArgument):
            parse_uri(bad)


def test_aliases() -> None:
    assert check_alias("champion") == "champion"
    assert check_alias("Stage_2-b") == "Stage_2-b"
    for bad in ("", "latest", "LATEST", "v1", "V12", "1st", "a b", "x" * 64):
        with pytest.raises(InvalidArgument):
            check_alias(bad)
