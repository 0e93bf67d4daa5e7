"""Records of the model registry and of job artifacts, as tracking.py returns them.

They live apart from domain/models.py because tracking.py builds them and the registry
(domain/registry.py) imports tracking.py: a module of plain records keeps that free of cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Artifact:
    """A file or folder; ``path`` is relative to the run's (or the version's) artifact root."""

    path: str
    is_dir: bool
    size_bytes: int = 0


@dataclass(frozen=True)
class RegisteredModel:
    """An MLflow registered model whose name is the Brinell model id."""

    id: str
    description: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    latest_version: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True)
class ModelVersion:
    model_id: str
    version: str
    job_id: str = ""
    run_id: str = ""
    artifact_path: str = ""
    source: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    create_time: datetime | None = None
