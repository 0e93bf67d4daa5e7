"""Agent configuration, built by the CLI (`brinell agent`) or by `python -m brinell.agent`."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from brinell import images
from brinell.ids import AGENT_ID_RE

MIB = 1024 * 1024

EXECUTORS = ("process", "docker")
PULL_POLICIES = ("always", "missing")
NETWORK_MODES = ("host", "none", "bridge")


def per_queue(values: list[str]) -> dict[str, str]:
    """`[QUEUE=]VALUE` options (repeatable) as {queue: value}; "" for every queue."""
    found: dict[str, str] = {}
    for text in values:
        queue, sep, value = text.partition("=")
        found[queue if sep else ""] = value if sep else text
    return found


def docker_settings_problems(
    images_by_queue: dict[str, str], networks: dict[str, str], pull: str
) -> list[str]:
    """What is wrong with the docker executor's settings (image references, network modes)."""
    problems = []
    for queue, ref in images_by_queue.items():
        if problem := images.reference_problem(ref):
            problems.append(f"default image{f' of queue {queue}' if queue else ''}: {problem}")
    for queue, mode in networks.items():
        if mode not in NETWORK_MODES and not mode.startswith("container:"):
            problems.append(
                f"network mode {mode!r}{f' of queue {queue}' if queue else ''} must be one of "
                f"{', '.join(NETWORK_MODES)} or container:NAME"
            )
    if pull not in PULL_POLICIES:
        problems.append(f"pull policy must be one of {', '.join(PULL_POLICIES)}")
    return problems


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
    # Draining (SIGTERM, `brinell agent drain`): how long running attempts may finish.
    drain_timeout: float = 60.0
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
    # "process": jobs run in the agent's Python environment; "docker": one container per
    # attempt (agent/docker_executor.py), with these settings:
    executor: str = "process"
    # Default image and network mode per queue ("" key: every queue); network default host.
    images: dict[str, str] = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)
    # A docker config file with the registries' credentials (None: BRINELL_REGISTRY_AUTH,
    # else docker's own ~/.docker/config.json).
    registry_auth: Path | None = None
    # "always" pulls each attempt's image (a moved tag is seen); "missing" only when absent.
    pull: str = "always"
    keep_failed_containers: bool = False
    # Seconds a container outlives an agent that stopped (died, froze) before it ends itself;
    # 0: it runs on (an agent that comes back in time re-attaches either way).
    container_watchdog: float = 60.0
    # process executor: Python jobs fork from a pre-imported parent (agent/warm.py), which
    # also imports these modules ahead of the first job.
    warm_runtime: bool = True
    warm_imports: list[str] = field(default_factory=list)
    # The Docker engine (None: DOCKER_HOST, else the default socket).
    docker_host: str | None = None

    def __post_init__(self) -> None:
        # Callers may hand in strings (argparse, typer); normalise once here.
        self.work_dir = Path(self.work_dir).expanduser()
        if self.agent_id is None:
            self.agent_id = default_agent_id()
        problems: list[str] = []
        if not self.control_plane.strip():
            problems.append("control_plane must be HOST:PORT")
        if not AGENT_ID_RE.match(self.agent_id):
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
        if self.drain_timeout < 0:
            problems.append("drain_timeout must not be negative")
        if self.max_archive_bytes < 1 or self.max_archive_files < 1:
            problems.append("archive limits must be positive")
        if self.keep_workspaces < 0 or self.workspace_ttl_hours < 0:
            problems.append("keep_workspaces and workspace_ttl_hours must not be negative")
        if self.reconnect_min <= 0 or self.reconnect_max < self.reconnect_min:
            problems.append("need 0 < reconnect_min <= reconnect_max")
        if self.executor not in EXECUTORS:
            problems.append(f"executor must be one of {', '.join(EXECUTORS)}")
        if self.registry_auth is None and os.environ.get("BRINELL_REGISTRY_AUTH"):
            self.registry_auth = Path(os.environ["BRINELL_REGISTRY_AUTH"])
        problems += docker_settings_problems(self.images, self.networks, self.pull)
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
        if self.executor == "docker" and importlib.util.find_spec("docker") is None:
            return "the docker executor needs the docker SDK: pip install 'brinell[agent]'"
        # With the docker executor the agent needs Prefect only to run its own server.
        needs_prefect = self.prefect_mode == "auto" or (
            self.executor == "process" and self.prefect_mode != "none"
        )
        if needs_prefect and importlib.util.find_spec("prefect") is None:
            return (
                "the agent's jobs need Prefect, which is not installed here: "
                "pip install 'brinell[agent]' (or start the agent with --prefect-api-url none "
                "for jobs that do not use Prefect)"
            )
        return ""
