"""Crucible: ML-security experiments.

The public Python API. Everything a user needs is importable from here; nothing here needs
grpc to be imported by the user, and ``import crucible`` stays light (no typer, rich, prefect
or mlflow), so job code can import it cheaply::

    from crucible import Client

    with Client("127.0.0.1:7070") as client:
        ep, rev = client.entry_points.push("examples/hello-world")
        job = client.jobs.submit("demo", ep, {"rounds": 5})
        print(client.jobs.wait(job).state)
"""

from .client import Client
from .plugin import task
from .errors import (
    AlreadyExistsError,
    CancelledError,
    CrucibleError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
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
)

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentState",
    "AlreadyExistsError",
    "CancelledError",
    "Capacity",
    "Client",
    "CrucibleError",
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
    "NotFoundError",
    "Parameter",
    "PermissionDeniedError",
    "UnavailableError",
    "__version__",
    "task",
]
