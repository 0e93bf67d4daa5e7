"""Executors: run an entry point's command and report its lines and outcome.

Executors know nothing of gRPC or the control plane: the daemon hands them a RunSpec and
callbacks and maps the result to the wire. The docker executor will implement the same
interface.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brinell import mlproject

from .warm import WarmProcess, WarmRuntime, launch_for
from .workspace import find_mlproject

# Lines longer than this are split, so one runaway line cannot exhaust memory or a message.
MAX_LINE_BYTES = 32 * 1024
# A failed job's reason quotes its last stderr line, up to this long.
MAX_REASON_CHARS = 500
_READ_CHUNK = 64 * 1024
# How often the exit of a process is checked; asyncio's wait() also waits for the pipes,
# which a background child may hold open long after the main process exited.
_POLL_INTERVAL = 0.02
# After SIGKILL, how long to wait for the kernel to reap the group before giving up.
_KILL_WAIT = 5.0
# After the process is gone, how long to wait for the last output still in the pipes.
_DRAIN_WAIT = 2.0


class Stream(enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"
    # Lines the agent writes about what it does (fetching, starting, signals, exit).
    SYSTEM = "system"


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class ExecutionResult:
    outcome: Outcome
    # None when the process never started or its exit status is unknown. A process killed by
    # signal N reports 128 + N, as shells and container runtimes do.
    exit_code: int | None
    message: str


LineCallback = Callable[[Stream, str], None]
#: Called once the job runs: its main process id (0 when unknown) and, in a container, the
#: image digest it runs (`repo@sha256:...`; "" otherwise).
StartCallback = Callable[[int, str], None]


@dataclass(frozen=True)
class PluginBundle:
    """A plugin version the job runs with, extracted on this host."""

    plugin: str  # `plugins/{id}`
    version: str
    digest: str
    package: str
    # The folder that holds the package: it goes on PYTHONPATH.
    path: Path

    def describe(self) -> dict[str, str]:
        return {
            "plugin": self.plugin,
            "version": self.version,
            "digest": self.digest,
            "package": self.package,
            "path": str(self.path),
        }


@dataclass(frozen=True)
class RunSpec:
    """One attempt to run: what and where, and under which limits."""

    project_root: Path
    entry: str
    parameters: Mapping[str, str]
    job_id: str
    attempt: int
    # The Assignment's environment (MLflow run, tracking URI, ...).
    env: Mapping[str, str] = field(default_factory=dict)
    # Wall-clock limit of the process; None means none.
    timeout: float | None = None
    grace_period: float = 10.0
    # Handed to the job as PREFECT_API_URL when set.
    prefect_api_url: str | None = None
    # Handed to the job as PREFECT_UI_URL when set; "" stops Prefect from printing a link to
    # a UI that is not there. None: Prefect's default (the API URL without /api).
    prefect_ui_url: str | None = None
    # The plugin versions pinned by the job, in the order their paths go on PYTHONPATH.
    plugins: tuple[PluginBundle, ...] = ()
    # The GPUs the attempt holds (UUIDs); on a host with GPUs, a job that holds none sees none.
    gpu_uuids: tuple[str, ...] = ()
    host_has_gpus: bool = False
    # The attempt's workspace (project_root is in it): the docker executor mounts it.
    workspace: Path | None = None
    # The job's queue and container image (docker executor; "" for the queue's default).
    queue: str = "default"
    image: str = ""
    # The job's resource request; the docker executor makes them limits (0: none).
    cpus: float = 0.0
    memory_bytes: int = 0


class CancelSignal:
    """Lets the daemon stop an attempt from outside the task that runs it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = ""
        self.grace_period: float | None = None

    def cancel(self, reason: str = "", grace_period: float | None = None) -> None:
        """Requests a stop; a later call may only shorten the grace period."""
        if not self._event.is_set():
            self.reason = reason
            self.grace_period = grace_period
            self._event.set()
        elif grace_period is not None and (
            self.grace_period is None or grace_period < self.grace_period
        ):
            self.grace_period = grace_period

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(frozen=True)
class Recovered:
    """An attempt an executor found at agent start, left by the agent's previous run (a
    container outlives its agent)."""

    job_id: str
    attempt: int
    grace_period: float
    # What is left of its run-time limit (None: none).
    timeout: float | None
    # The executor's own reference to it.
    handle: Any
    running: bool


class Executor(abc.ABC):
    """Runs one attempt to completion; never raises for job failures, only returns them."""

    name: str

    async def recover(self) -> list[Recovered]:
        """Attempts left running on this host by the agent's previous run (none here: a
        process dies with its agent)."""
        return []

    async def resume(
        self,
        found: Recovered,
        skip: Mapping[Stream, int],
        *,
        on_line: LineCallback,
        on_start: StartCallback | None = None,
        cancel: CancelSignal | None = None,
    ) -> ExecutionResult:
        """Re-attaches to a recovered attempt and runs it to completion; the first
        ``skip[stream]`` lines of each stream are already stored and not passed on."""
        raise NotImplementedError(f"the {self.name} executor cannot re-attach")

    async def start(self) -> None:  # noqa: B027 - optional
        """Called once when the agent starts, before any attempt."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Called once when the agent stops, after its attempts ended."""

    async def discard(self, found: Recovered) -> None:  # noqa: B027 - optional
        """Stops and removes a recovered attempt the control plane no longer assigns here."""

    def check(self) -> str:
        """Why this executor cannot run jobs on this host ("" when it can)."""
        return ""

    @abc.abstractmethod
    async def run(
        self,
        spec: RunSpec,
        *,
        on_line: LineCallback,
        on_start: StartCallback | None = None,
        cancel: CancelSignal | None = None,
    ) -> ExecutionResult:
        """Runs the attempt; ``on_start`` gets the pid once the process runs."""


def load_command(project_root: Path, entry: str, parameters: Mapping[str, str]) -> str:
    """Reads MLproject and builds the entry's shell command (raises MLprojectError)."""
    return load_entry(project_root, entry, parameters)[0]


def load_entry(
    project_root: Path, entry: str, parameters: Mapping[str, str]
) -> tuple[str, mlproject.EntrySpec]:
    """The entry's shell command and its declaration (raises MLprojectError)."""
    path = find_mlproject(project_root)
    if path is None:
        raise mlproject.MLprojectError([f"no MLproject file in the entry point ({project_root})"])
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise mlproject.MLprojectError([f"cannot read {path.name}: {exc}"]) from exc
    project = mlproject.parse(text)
    resolved = mlproject.resolve(project, entry, dict(parameters))
    spec = project.entry(entry)
    assert spec is not None  # resolve() raised otherwise
    command: str = mlproject.build_command(spec, resolved)
    return command, spec


def build_env(
    spec: RunSpec,
    base: Mapping[str, str] | None = None,
    python: str | None = sys.executable,
) -> dict[str, str]:
    """The job's environment: the agent's, then the assignment's, then what the agent owns.

    What the agent owns: ``PYTHONPATH`` starts with the pinned plugin bundles (before any
    existing entries, so a job imports exactly its pinned versions even where another copy
    of a package is installed), ``BRINELL_PLUGIN_PACKAGES`` (comma-separated package names),
    ``BRINELL_PLUGINS`` (JSON list of {plugin, version, digest, package, path}) and
    ``BRINELL_PARAMETERS`` (JSON object of the job's parameters); see ``brinell.runtime``.
    """
    env = dict(os.environ if base is None else base)
    env.update(spec.env)
    if spec.prefect_api_url:
        env["PREFECT_API_URL"] = spec.prefect_api_url
    if spec.prefect_ui_url is not None:
        env["PREFECT_UI_URL"] = spec.prefect_ui_url
    if python is not None:
        # `python` in a command means the agent's interpreter, which has prefect and mlflow.
        # (None: a container's, found on the image's PATH.)
        bin_dir = os.path.dirname(python)
        path = env.get("PATH") or os.defpath
        env["PATH"] = bin_dir + os.pathsep + path if bin_dir else path
    env["PYTHONUNBUFFERED"] = "1"
    env["BRINELL_JOB"] = f"jobs/{spec.job_id}"
    env["BRINELL_JOB_ID"] = spec.job_id
    env["BRINELL_ATTEMPT"] = str(spec.attempt)
    env["BRINELL_PARAMETERS"] = json.dumps(dict(spec.parameters), sort_keys=True)
    if spec.gpu_uuids or spec.host_has_gpus:
        # CUDA, NVML-based tools and PyTorch all accept UUIDs here; "" hides every GPU.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_uuids)
    roots = list(dict.fromkeys(str(p.path) for p in spec.plugins))
    if roots:
        existing = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join(roots + ([existing] if existing else []))
    env["BRINELL_PLUGIN_PACKAGES"] = ",".join(p.package for p in spec.plugins if p.package)
    env["BRINELL_PLUGINS"] = json.dumps([p.describe() for p in spec.plugins])
    return env


#: The attempt's supervisor (agent/supervise.py): kills the attempt's process group if the
#: agent dies, even by SIGKILL.
SUPERVISOR = Path(__file__).with_name("supervise.py")


def supervised(*command: str) -> list[str]:
    """``command`` under the supervisor, which passes its exit status on unchanged."""
    return [sys.executable, "-I", str(SUPERVISOR), str(os.getpid()), *command]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group.

    Zombies are left out: orphans reparented to a PID 1 that does not reap would otherwise
    look alive forever. Falls back to killpg(0) where /proc is missing.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces; fields follow the last ')'.
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) < 3:
            continue
        state, pgrp = fields[0], fields[2]
        if pgrp == str(pgid) and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class ProcessExecutor(Executor):
    """Runs the command with /bin/sh in its own process group, in the project directory.

    stdout and stderr are read line by line; order is kept within each stream, but the
    interleaving of the two is only as good as the pipes deliver it.
    """

    name = "process"

    def __init__(
        self, python: str = sys.executable, shell: str = "/bin/sh", warm: WarmRuntime | None = None
    ) -> None:
        self.python = python
        self.shell = shell
        # Python jobs fork from this pre-imported parent (None: every job runs cold).
        self.warm = warm

    async def start(self) -> None:
        if self.warm is not None:
            self.warm.start_soon()

    async def close(self) -> None:
        if self.warm is not None:
            await self.warm.close()

    async def _warm_start(
        self, spec: RunSpec, command: str, entry: mlproject.EntrySpec, env: dict[str, str]
    ) -> WarmProcess | str:
        """The attempt forked from the warm runtime, or why it runs cold."""
        if self.warm is None:
            return ""
        if entry.isolated:
            return "the entry point asks for isolation"
        launch = launch_for(command, self.python, spec.project_root)
        if isinstance(launch, str):
            return launch
        reason = self.warm.cold_reason(launch, env, spec.project_root)
        if reason:
            return reason
        if not self.warm.ready:
            # Never slower than before the runtime existed: a job that would wait for the
            # imports runs cold beside them (a restarted agent takes requeued jobs at once).
            self.warm.start_soon()
            return "the warm runtime is still starting"
        try:
            return await self.warm.spawn(launch, spec.project_root, env)
        except (RuntimeError, OSError, TimeoutError) as exc:
            return f"the warm runtime could not start it: {exc or type(exc).__name__}"

    async def run(
        self,
        spec: RunSpec,
        *,
        on_line: LineCallback,
        on_start: StartCallback | None = None,
        cancel: CancelSignal | None = None,
    ) -> ExecutionResult:
        def system(text: str) -> None:
            on_line(Stream.SYSTEM, text)

        try:
            command, entry = load_entry(spec.project_root, spec.entry, spec.parameters)
        except mlproject.MLprojectError as exc:
            message = f"cannot run entry {spec.entry!r}: {exc}"
            system(message)
            return ExecutionResult(Outcome.FAILED, None, message)
        if cancel is not None and cancel.requested:
            system("cancelled before start")
            return ExecutionResult(Outcome.CANCELLED, None, _cancel_message(cancel))

        env = build_env(spec, python=self.python)
        system(f"running: {command}")
        proc: asyncio.subprocess.Process | WarmProcess
        warm = await self._warm_start(spec, command, entry, env)
        if isinstance(warm, WarmProcess):
            proc = warm
            system(f"in the warm runtime (process {proc.pid})")
        else:
            if warm:
                system(f"in a fresh interpreter: {warm}")
            try:
                proc = await asyncio.create_subprocess_exec(
                    *supervised(self.shell, "-c", command),
                    cwd=spec.project_root,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as exc:
                message = f"cannot start the process: {exc}"
                system(message)
                return ExecutionResult(Outcome.FAILED, None, message)

        # Each leads its own process group: the supervisor (start_new_session), or the child
        # the warm runtime forked.
        pgid = proc.pid
        assert proc.stdout is not None and proc.stderr is not None
        last_error = LastErrorLine(on_line)
        readers = [
            asyncio.create_task(_read_lines(proc.stdout, Stream.STDOUT, on_line)),
            asyncio.create_task(_read_lines(proc.stderr, Stream.STDERR, last_error)),
        ]
        try:
            if on_start is not None:
                on_start(proc.pid, "")
            outcome, message = await self._supervise(proc, pgid, spec, cancel, system)
            returncode = proc.returncode
            assert returncode is not None
            exit_code = returncode if returncode >= 0 else 128 - returncode
            # Children that outlive the main process (daemons, `cmd &`) end with the attempt.
            if group_members(pgid):
                system("the main process exited; stopping what it left running")
                await _terminate_group(pgid, spec.grace_period, system, lambda: True)
            await _drain(readers, proc)
        finally:
            # Reached without an exit only when our task is cancelled (agent crash path):
            # never leave the group behind.
            if proc.returncode is None or group_members(pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            for reader in readers:
                reader.cancel()

        if returncode < 0:
            status = f"killed by {_signal_name(-returncode)} (exit code {exit_code})"
        else:
            status = f"exit code {exit_code}"
        system(status)
        if outcome is None:
            if exit_code == 0:
                return ExecutionResult(Outcome.SUCCEEDED, 0, "")
            # The job's reason: the exit status and the last line the process wrote to
            # stderr (for a Python script that dies, the exception).
            reason = f"{status}: {last_error.text}" if last_error.text else status
            return ExecutionResult(Outcome.FAILED, exit_code, reason)
        return ExecutionResult(outcome, exit_code, message)

    async def _supervise(
        self,
        proc: asyncio.subprocess.Process | WarmProcess,
        pgid: int,
        spec: RunSpec,
        cancel: CancelSignal | None,
        system: Callable[[str], None],
    ) -> tuple[Outcome | None, str]:
        """Waits for exit, cancel or timeout; returns (None, "") for a natural exit."""
        exited = asyncio.create_task(_wait_exit(proc))
        waiters: set[asyncio.Task[None]] = {exited}
        cancelled: asyncio.Task[None] | None = None
        if cancel is not None:
            cancelled = asyncio.create_task(cancel.wait())
            waiters.add(cancelled)
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=spec.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waiters:
                task.cancel()
        if exited in done or proc.returncode is not None:
            return None, ""
        if cancelled is not None and cancelled in done:
            assert cancel is not None
            grace = spec.grace_period if cancel.grace_period is None else cancel.grace_period
            system(f"cancel requested{': ' + cancel.reason if cancel.reason else ''}")
            await _terminate_group(pgid, grace, system, lambda: proc.returncode is not None)
            await _wait_exit(proc)
            return Outcome.CANCELLED, _cancel_message(cancel)
        system(f"timeout of {_seconds(spec.timeout)} exceeded")
        await _terminate_group(pgid, spec.grace_period, system, lambda: proc.returncode is not None)
        await _wait_exit(proc)
        return Outcome.TIMED_OUT, f"timed out after {_seconds(spec.timeout)}"


def _cancel_message(cancel: CancelSignal) -> str:
    return f"cancelled: {cancel.reason}" if cancel.reason else "cancelled"


def _seconds(value: float | None) -> str:
    return f"{value:g}s" if value is not None else "none"


async def _wait_exit(proc: asyncio.subprocess.Process | WarmProcess) -> None:
    """Waits for the main process to exit, without waiting for its pipes to close."""
    while proc.returncode is None:
        await asyncio.sleep(_POLL_INTERVAL)


async def _terminate_group(
    pgid: int,
    grace: float,
    system: Callable[[str], None],
    main_exited: Callable[[], bool],
) -> None:
    """SIGTERM to the group, up to ``grace`` seconds to exit, then SIGKILL to whatever is left."""
    if not group_members(pgid):
        return
    system(f"sending SIGTERM to process group {pgid}")
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_members(pgid):
            return
        await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    if not group_members(pgid):
        return
    system(f"grace period of {grace:g}s over; sending SIGKILL to process group {pgid}")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + _KILL_WAIT
    while (group_members(pgid) or not main_exited()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def _drain(
    readers: list[asyncio.Task[None]], proc: asyncio.subprocess.Process | WarmProcess
) -> None:
    """Waits for the readers to hit end of file; a process that escaped the group (setsid)
    may hold a pipe open, so the wait is bounded."""
    _done, pending = await asyncio.wait(readers, timeout=_DRAIN_WAIT)
    for task in pending:
        task.cancel()
    if isinstance(proc, WarmProcess):
        proc.close()
    elif pending:
        # The pipes stay open only because something outside the group holds them; close our
        # ends so the transport does not leak.
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()
    else:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), _DRAIN_WAIT)


class LastErrorLine:
    """Passes stderr lines on, remembering the last non-blank one (bounded)."""

    def __init__(self, on_line: LineCallback) -> None:
        self._on_line = on_line
        self.text = ""

    def __call__(self, stream: Stream, text: str) -> None:
        if text.strip():
            line = text.strip()
            self.text = (
                line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 1] + "…"
            )
        self._on_line(stream, text)


class LineSplitter:
    """Splits a byte stream into lines (``\n``; a trailing ``\r`` dropped); a line longer than
    MAX_LINE_BYTES comes out in MAX_LINE_BYTES pieces. The result depends only on the bytes,
    not on how they were chunked, so a stream read twice splits the same way twice (the docker
    executor counts lines to resume a log where the stored part ends)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[str]:
        lines: list[str] = []
        buffer = self._buffer + chunk
        start = 0
        while True:
            newline = buffer.find(b"\n", start)
            if newline < 0:
                # `>`, as below: a line of exactly MAX_LINE_BYTES stays one line however the
                # bytes arrive.
                while len(buffer) - start > MAX_LINE_BYTES:
                    lines.append(_decode(buffer[start : start + MAX_LINE_BYTES]))
                    start += MAX_LINE_BYTES
                break
            while newline - start > MAX_LINE_BYTES:
                lines.append(_decode(buffer[start : start + MAX_LINE_BYTES]))
                start += MAX_LINE_BYTES
            lines.append(_decode(buffer[start:newline]))
            start = newline + 1
        self._buffer = buffer[start:]
        return lines

    def end(self) -> list[str]:
        """What is left at end of file: a last line without a newline."""
        rest, self._buffer = self._buffer, b""
        return [_decode(rest)] if rest else []


async def _read_lines(reader: asyncio.StreamReader, stream: Stream, on_line: LineCallback) -> None:
    """Splits a pipe into lines; a trailing partial line is emitted at end of file."""
    splitter = LineSplitter()
    while True:
        chunk = await reader.read(_READ_CHUNK)
        if not chunk:
            break
        for line in splitter.feed(chunk):
            on_line(stream, line)
    for line in splitter.end():
        on_line(stream, line)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").removesuffix("\r")
