"""Brinell: ML-security experiments.

The public Python API. Everything a user needs is importable from here; nothing here needs
grpc to be imported by the user, and ``import brinell`` stays light (no typer, rich, prefect
or mlflow), so job code can import it cheaply::

    from brinell import Client

    with Client("127.0.0.1:7070") as client:
        ep, rev = client.entry_points.push("examples/hello-world")
        job = client.jobs.submit("demo", ep, {"rounds": 5})
        print(client.jobs.wait(job).state)
"""

from .client import Client
from .errors import (
    AlreadyExistsError,
    BrinellError,
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from .models import Artifact, Model, ModelVersion
from .plugin import task
from .plugins import Plugin, PluginPin, PluginVersion, Task, TaskInput
from .types import (
    Agent,
    AgentState,
    Capacity,
    Entry,
    EntryPoint,
    EntryPointRevision,
    Experiment,
    Gpu,
    Job,
    JobState,
    LogLine,
    LogStream,
    Parameter,
    Resources,
    RetryPolicy,
)

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentState",
    "AlreadyExistsError",
    "Artifact",
    "BrinellError",
    "CancelledError",
    "Capacity",
    "Client",
    "DeadlineExceededError",
    "Entry",
    "EntryPoint",
    "EntryPointRevision",
    "Experiment",
    "FailedPreconditionError",
    "FieldViolation",
    "Gpu",
    "InternalError",
    "InvalidArgumentError",
    "Job",
    "JobState",
    "LogLine",
    "LogStream",
    "Model",
    "ModelVersion",
    "NotFoundError",
    "Parameter",
    "PermissionDeniedError",
    "UnauthenticatedError",
    "Plugin",
    "PluginPin",
    "PluginVersion",
    "Resources",
    "RetryPolicy",
    "Task",
    "TaskInput",
    "UnavailableError",
    "__version__",
    "task",
]
