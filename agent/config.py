"""Agent configuration, built by the CLI (`brinell agent`) or by `python -m brinell.agent`."""

from __future__ import annotations

import importlib.util
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024

_AGENT_ID = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


def default_agent_id() -> str:
    """The host name, made into a valid agent id (the control plane accepts [a-z0-9-.], 1-63)."""
    return sanitize_agent_id(socket.gethostname())


def sanitize_agent_id(name: str) -> str:
    """Lowercases and replaces characters the control plane would reject, so any host name works."""
    cleaned = re.sub(r"[^a-z0-9.-]+", "-", name.strip().lower())
    cleaned = cleaned.strip(".-")[:63].rstrip(".-")
    return cleaned or "agent"


def _default_work_dir() -> Path:
    return Path.home() / ".brinell" / "agent"


@dataclass
class AgentConfig:
    """Everything the daemon needs; defaults suit one agent per host."""

    control_plane: str
    queues: list[str] = field(default_factory=lambda: ["default"])
    labels: dict[str, str] = field(default_factory=dict)
    # None means the sanitized host name; filled in by __post_init__.
    agent_id: str | None = None
    slots: int = 1
    work_dir: Path = field(default_factory=_default_work_dir)
    # "auto": the agent runs its own local Prefect server; "none": jobs get no PREFECT_API_URL
    # from the agent; anything else: a URL handed to jobs as PREFECT_API_URL.
    prefect_api_url: str = "auto"
    # SIGTERM to SIGKILL, when the assignment does not say.
    grace_period: float = 10.0
    max_archive_bytes: int = 512 * MIB
    max_archive_files: int = 20000
    reconnect_min: float = 0.2
    reconnect_max: float = 10.0
    # Finished attempts' workspaces: the newest this many are kept, none longer than this
    # (hours; 0: no age limit). A job's files worth keeping belong in its MLflow run.
    keep_workspaces: int = 10
    workspace_ttl_hours: float = 24.0
    # The credential: an agent token (`brinell token create --agent ID`) or an admin's token;
    # None: BRINELL_TOKEN, ~/.brinell/credentials, ... (brinell.credentials.resolve_token).
    token: str | None = None
    # TLS: the CA that signed the control plane's certificate (None: plaintext, unless
    # BRINELL_TLS_CA is set); with mutual TLS, this agent's certificate and key.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        # Callers may hand in strings (argparse, typer); normalise once here.
        self.work_dir = Path(self.work_dir).expanduser()
        if self.agent_id is None:
            self.agent_id = default_agent_id()
        problems: list[str] = []
        if not self.control_plane.strip():
            problems.append("control_plane must be HOST:PORT")
        if not _AGENT_ID.match(self.agent_id):
            problems.append(
                f"agent id {self.agent_id!r} must be 1-63 characters of [a-z0-9-.], "
                "starting with a letter or digit"
            )
        if not self.queues:
            problems.append("at least one queue is required")
        if self.slots < 1:
            problems.append("slots must be at least 1")
        if self.grace_period < 0:
            problems.append("grace_period must not be negative")
        if self.max_archive_bytes < 1 or self.max_archive_files < 1:
            problems.append("archive limits must be positive")
        if self.keep_workspaces < 0 or self.workspace_ttl_hours < 0:
            problems.append("keep_workspaces and workspace_ttl_hours must not be negative")
        if self.reconnect_min <= 0 or self.reconnect_max < self.reconnect_min:
            problems.append("need 0 < reconnect_min <= reconnect_max")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def id(self) -> str:
        """The agent id, always set after construction (typed as str for callers)."""
        assert self.agent_id is not None
        return self.agent_id

    @property
    def prefect_mode(self) -> str:
        """ "auto", "none" or "url"."""
        value = self.prefect_api_url.strip().lower()
        if value in ("auto", "none"):
            return value
        return "url"

    def missing_runtime(self) -> str:
        """Why this host cannot run the jobs the agent would take, or "" when it can.

        Jobs run in the agent's Python environment; with Prefect on (the default), their flows
        need it there, and without it every job would fail one by one after starting.
        """
        if self.prefect_mode != "none" and importlib.util.find_spec("prefect") is None:
            return (
                "the agent's jobs need Prefect, which is not installed here: "
                "pip install 'brinell[agent]' (or start the agent with --prefect-api-url none "
                "for jobs that do not use Prefect)"
            )
        return ""
