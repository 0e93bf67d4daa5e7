"""The docker executor: one container per attempt, from the job's image, through the docker SDK.

What a container gets: the attempt's workspace at /brinell/workspace (read-write; the working
directory is the project inside it) and the agent's extracted plugin bundles at
/brinell/plugins (read-only), the job's environment as the process executor builds it (paths
rewritten to the container's; PATH, HOME and the rest from the image), CPU and memory limits
from the job's resource request, its GPUs as device requests by UUID, the queue's network mode,
and labels naming job, attempt and agent. The command runs as `/bin/sh -c` under the engine's
init (tini), which passes a stop's SIGTERM to the whole process group.

A container outlives its agent: an agent that starts again finds its containers by label
(``recover``), re-attaches to those the control plane still assigns to it (``resume``: the log
continues where the stored part ends, counted in lines per stream) and removes the others
(``discard``). An agent that does not come back must not leave its job running beside the
attempt the control plane requeued elsewhere: the agent touches a file (``alive_file``) every
few seconds while it runs containers, each container sees it read-only at /brinell/alive, and
a watchdog in the container ends the job once the file is older than ``watchdog`` seconds
(``WATCHDOG``: POSIX sh, reparented to the container's init, so the job neither sees it as a
child nor waits on it; the job's exit code and output are untouched).

Registry credentials come from a docker config file (``auths``), never from the job; they are
neither logged nor sent anywhere but to the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import docker  # type: ignore[import-untyped]
import docker.auth  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import docker.types  # type: ignore[import-untyped]
import requests

from brinell import images, mlproject
from brinell.ids import JOB_ID_RE

from .executor import (
    MAX_REASON_CHARS,
    CancelSignal,
    ExecutionResult,
    Executor,
    LastErrorLine,
    LineCallback,
    LineSplitter,
    Outcome,
    Recovered,
    RunSpec,
    StartCallback,
    Stream,
    build_env,
    load_command,
)

log = logging.getLogger("brinell.agent")

WORKSPACE = PurePosixPath("/brinell/workspace")
PLUGINS = PurePosixPath("/brinell/plugins")
LABEL_JOB = "brinell.job"
LABEL_ATTEMPT = "brinell.attempt"
LABEL_AGENT = "brinell.agent"
LABEL_TIMEOUT = "brinell.timeout"
LABEL_GRACE = "brinell.grace-period"
LABEL_DIGEST = "brinell.image-digest"
ALIVE = PurePosixPath("/brinell/alive")
# `sh -c WATCHDOG brinell LIMIT COMMAND`: starts the watchdog (twice forked, so init adopts
# it), then becomes the job's shell. When the agent's alive file has not changed for LIMIT
# seconds, it kills every process in the container (the job ends with 137). Images without
# `stat` or `date` run unwatched, as before.
WATCHDOG = r"""limit=$1; shift
( (
  while sleep 2; do
    now=$(date +%s) && seen=$(stat -c %Y /brinell/alive) || continue
    if [ $((now - seen)) -gt "$limit" ]; then
      echo "brinell: the agent stopped more than ${limit}s ago: ending the job" >&2
      kill -9 -1
      exit 0
    fi
  done
) >/dev/null </dev/null 2>&1 & )
exec /bin/sh -c "$1"
"""
# Appended to the name of a container kept after a failed attempt (--keep-failed-containers).
KEPT_SUFFIX = "-failed"
# After the container exited, how long to wait for the end of its log streams.
_DRAIN_WAIT = 5.0
# Extra seconds the engine gets to answer a stop beyond the grace period.
_STOP_SLACK = 10.0

# How the engine words a pull's failures.
_UNREACHABLE = ("connection refused", "no such host", "dial tcp", "i/o timeout")
_MISSING = ("not found", "manifest unknown")

T = TypeVar("T")


@dataclass(frozen=True)
class DockerSettings:
    agent_id: str
    # The agent's extracted plugin bundles (mounted read-only).
    plugin_cache: Path
    # Default image and network mode per queue; the key "" applies to every queue.
    images: Mapping[str, str] = field(default_factory=dict)
    networks: Mapping[str, str] = field(default_factory=dict)
    # A docker config file (`{"auths": {REGISTRY: {"auth": base64(user:password)}}}`); None:
    # docker's own (~/.docker/config.json, DOCKER_CONFIG).
    registry_auth: Path | None = None
    pull: str = "always"
    # Keep the containers of attempts that did not succeed (for `docker logs`/`inspect`).
    keep_failed: bool = False
    # The engine (None: DOCKER_HOST or the default socket).
    host: str | None = None
    # Connections to the engine: each running attempt holds three (two log streams, a wait).
    max_connections: int = 16
    # Seconds after the agent stopped touching ``alive_file`` that a container ends itself
    # (0 or no file: never).
    watchdog: float = 60.0
    alive_file: Path | None = None

    def image_for(self, queue: str) -> str:
        return self.images.get(queue) or self.images.get("", "")

    def network_for(self, queue: str) -> str:
        return self.networks.get(queue) or self.networks.get("", "host")


def _bounded(text: str, limit: int = MAX_REASON_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _in_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Runs a blocking call in a daemon thread (an engine call that never returns must not keep
    the agent's interpreter from exiting, as the default executor's threads would)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result: Any = fn()
            error: BaseException | None = None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="brinell-docker", daemon=True).start()
    return future


class DockerExecutor(Executor):
    name = "docker"

    def __init__(self, settings: DockerSettings, client: Any = None) -> None:
        self.settings = settings
        if client is None:
            # "auto": the engine's API version (Debian's 20.10 speaks 1.41, older than the SDK's
            # default).
            kwargs: dict[str, Any] = {"max_pool_size": settings.max_connections, "version": "auto"}
            client = (
                docker.DockerClient(base_url=settings.host, **kwargs)
                if settings.host
                else docker.from_env(**kwargs)
            )
        self.client = client
        self._alive: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ liveness

    @property
    def _watched(self) -> bool:
        return self.settings.watchdog > 0 and self.settings.alive_file is not None

    def _keep_alive(self) -> None:
        """Touches the alive file now and every few seconds from the agent's event loop (a
        loop that hangs stops touching it too), while the agent runs."""
        path = self.settings.alive_file
        if not self._watched or path is None:
            return
        # Touched in place, never replaced: a container's bind mount holds the file's inode.
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        if self._alive is None or self._alive.done():
            period = min(5.0, self.settings.watchdog / 4)

            async def touch() -> None:
                while True:
                    await asyncio.sleep(period)
                    with contextlib.suppress(OSError):
                        os.utime(path)

            self._alive = asyncio.get_running_loop().create_task(touch(), name="docker-alive")

    # ------------------------------------------------------------------ checks

    def check(self) -> str:
        """Why the engine cannot run jobs ("" when it can)."""
        try:
            self.client.ping()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            return f"cannot reach the Docker engine: {_bounded(str(exc), 300)}"
        return ""

    def _auth_for(self, ref: str) -> dict[str, str] | None:
        """The registry's credentials, read at each pull (a rotated password needs no restart)."""
        path = self.settings.registry_auth
        auth = docker.auth.load_config(config_path=str(path) if path else None)
        found = docker.auth.resolve_authconfig(auth, images.registry(ref))
        if not found or not found.get("username"):
            return None
        return {"username": found["username"], "password": found.get("password", "")}

    # ------------------------------------------------------------------ images

    def _pull(self, ref: str) -> tuple[str, str]:
        """(image id, digest `repo@sha256:...`) of ``ref``, pulled as the policy says."""
        repository, tag = images.split(ref)
        image = None
        if self.settings.pull == "missing":
            with contextlib.suppress(docker.errors.ImageNotFound):
                image = self.client.images.get(ref)
        if image is None:
            image = self.client.images.pull(repository, tag=tag, auth_config=self._auth_for(ref))
        repo_digests = image.attrs.get("RepoDigests") or []
        digests = [d for d in repo_digests if d.startswith(repository + "@")]
        return image.id, digests[0] if digests else image.id

    def _pull_error(self, ref: str, exc: Exception) -> str:
        registry = images.registry(ref)
        text = _bounded(getattr(exc, "explanation", None) or str(exc), 300)
        lowered = text.lower()
        if any(s in lowered for s in ("unauthorized", "authentication required", "no basic auth")):
            return (
                f"cannot pull image {ref}: registry {registry} refused the agent's credentials "
                f"(check the agent's registry auth file): {text}"
            )
        if any(s in lowered for s in _UNREACHABLE):
            return f"cannot pull image {ref}: registry {registry} is unreachable: {text}"
        if isinstance(exc, docker.errors.NotFound) or any(s in lowered for s in _MISSING):
            return f"cannot pull image {ref}: no such image in registry {registry}: {text}"
        return f"cannot pull image {ref}: {text}"

    # ------------------------------------------------------------------ run

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

        def failed(message: str) -> ExecutionResult:
            system(message)
            return ExecutionResult(Outcome.FAILED, None, message)

        try:
            command = load_command(spec.project_root, spec.entry, spec.parameters)
        except mlproject.MLprojectError as exc:
            return failed(f"cannot run entry {spec.entry!r}: {exc}")
        ref = spec.image or self.settings.image_for(spec.queue)
        if not ref:
            return failed(
                f"no container image: the job names none (MLproject docker_env.image or "
                f"--image at submit) and queue {spec.queue!r} has no default image on this "
                "agent (brinell agent --image)"
            )
        if problem := images.reference_problem(ref):
            return failed(f"cannot run the job: {problem}")
        tracking = spec.env.get("MLFLOW_TRACKING_URI", "")
        if (tracking and "://" not in tracking) or tracking.startswith(("file:", "sqlite:")):
            return failed(
                f"the control plane's MLflow tracking URI {tracking!r} is a local store, which "
                "a container cannot reach: run the control plane with an MLflow tracking "
                "server (brinell server --mlflow-uri http://HOST:PORT)"
            )
        if spec.workspace is None:
            return failed("agent error: the attempt has no workspace to mount")

        self._keep_alive()
        system(f"pulling image {ref}" if self.settings.pull == "always" else f"image {ref}")
        pulling = _in_thread(lambda: self._pull(ref))
        if not await _until(pulling, cancel):
            system("cancelled while pulling the image")
            return ExecutionResult(Outcome.CANCELLED, None, _cancel_message(cancel))
        try:
            image_id, digest = pulling.result()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            return failed(self._pull_error(ref, exc))
        system(f"image {digest}")

        try:
            container = await _in_thread(lambda: self._create(spec, command, ref, image_id, digest))
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            text = _bounded(getattr(exc, "explanation", None) or str(exc), 300)
            return failed(f"cannot create the container: {text}")
        result: ExecutionResult | None = None
        try:
            try:
                await _in_thread(container.start)
            except (docker.errors.DockerException, requests.RequestException) as exc:
                text = _bounded(getattr(exc, "explanation", None) or str(exc), 300)
                hint = " (the image has no /bin/sh)" if "/bin/sh" in text else ""
                return failed(f"cannot start the container{hint}: {text}")
            system(f"container {container.short_id} started: {command}")
            if on_start is not None:
                on_start(_pid(container), digest)
            result = await self._supervise(
                container, {}, on_line, cancel, spec.timeout, spec.grace_period, ref
            )
        finally:
            await self._remove_after(container, result)
        return result

    def _create(self, spec: RunSpec, command: str, ref: str, image_id: str, digest: str) -> Any:
        assert spec.workspace is not None
        inside = self._container_spec(spec)
        env = build_env(inside, base={}, python=None)
        # tini passes signals to the whole group: `sh -c` alone would leave its children.
        env["TINI_KILL_PROCESS_GROUP"] = "1"
        labels = {
            LABEL_JOB: spec.job_id,
            LABEL_ATTEMPT: str(spec.attempt),
            LABEL_AGENT: self.settings.agent_id,
            LABEL_TIMEOUT: f"{spec.timeout:g}" if spec.timeout else "",
            LABEL_GRACE: f"{spec.grace_period:g}",
            LABEL_DIGEST: digest,
        }
        mounts = [
            docker.types.Mount(str(WORKSPACE), str(spec.workspace), type="bind"),
        ]
        args = ["/bin/sh", "-c", command]
        if self._watched and self.settings.alive_file is not None:
            mounts.append(
                docker.types.Mount(
                    str(ALIVE), str(self.settings.alive_file), type="bind", read_only=True
                )
            )
            limit = f"{max(1, round(self.settings.watchdog))}"
            args = ["/bin/sh", "-c", WATCHDOG, "brinell-watchdog", limit, command]
        if spec.plugins:
            mounts.append(
                docker.types.Mount(
                    str(PLUGINS), str(self.settings.plugin_cache), type="bind", read_only=True
                )
            )
        kwargs: dict[str, Any] = {
            "command": args,
            "environment": env,
            "working_dir": str(inside.project_root),
            "labels": labels,
            "mounts": mounts,
            "network_mode": self.settings.network_for(spec.queue),
            "init": True,
            "stdin_open": False,
            "tty": False,
        }
        if spec.cpus > 0:
            kwargs["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.memory_bytes > 0:
            kwargs["mem_limit"] = spec.memory_bytes
        if spec.gpu_uuids:
            kwargs["device_requests"] = [
                docker.types.DeviceRequest(
                    driver="nvidia", device_ids=list(spec.gpu_uuids), capabilities=[["gpu"]]
                )
            ]
        user = self._user_for(image_id, spec.workspace)
        if user:
            kwargs["user"] = user
        name = f"brinell-{spec.job_id}-{spec.attempt}"
        try:
            return self.client.containers.create(image_id, name=name, **kwargs)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
        # The name is taken: by a container of this attempt left from before (the agent died
        # between create and start), which goes; anything else is not ours to remove.
        old = self.client.containers.get(name)
        ours = old.labels.get(LABEL_AGENT) == self.settings.agent_id
        if not ours or old.labels.get(LABEL_JOB) != spec.job_id:
            raise docker.errors.APIError(f"a container named {name} exists and is not this agent's")
        old.remove(force=True)
        return self.client.containers.create(image_id, name=name, **kwargs)

    def _container_spec(self, spec: RunSpec) -> RunSpec:
        """The spec with host paths replaced by where they are mounted in the container."""
        assert spec.workspace is not None
        root = WORKSPACE / spec.project_root.relative_to(spec.workspace).as_posix()
        plugins = tuple(
            replace(p, path=Path(PLUGINS / p.path.relative_to(self.settings.plugin_cache)))
            for p in spec.plugins
        )
        return replace(spec, project_root=Path(root), plugins=plugins)

    def _user_for(self, image_id: str, workspace: Path) -> str:
        """Who the job runs as, and a workspace that user can write.

        A non-root agent runs containers as itself (its workspace is its own); a root agent
        keeps the image's user and hands the workspace to it (a named user, whose id only the
        image knows, gets a workspace anyone may write)."""
        if os.geteuid() != 0:
            return f"{os.geteuid()}:{os.getegid()}"
        user = (self.client.images.get(image_id).attrs.get("Config") or {}).get("User") or ""
        uid_text, _, gid_text = user.partition(":")
        if user in ("", "0", "root", "0:0"):
            return ""
        if uid_text.isdigit() and (not gid_text or gid_text.isdigit()):
            uid, gid = int(uid_text), int(gid_text or uid_text)
            for path in [workspace, *workspace.rglob("*")]:
                os.chown(path, uid, gid, follow_symlinks=False)
        else:
            for path in [workspace, *workspace.rglob("*")]:
                if not path.is_symlink():
                    path.chmod(0o777 if path.is_dir() else 0o666)
        return ""

    # ------------------------------------------------------------------ supervise

    async def _supervise(
        self,
        container: Any,
        skip: Mapping[Stream, int],
        on_line: LineCallback,
        cancel: CancelSignal | None,
        timeout: float | None,
        grace: float,
        ref: str,
    ) -> ExecutionResult:
        def system(text: str) -> None:
            on_line(Stream.SYSTEM, text)

        last_error = LastErrorLine(on_line)
        loop = asyncio.get_running_loop()

        def emit(stream: Stream) -> Callable[[list[str]], None]:
            write = last_error if stream is Stream.STDERR else on_line

            def deliver(lines: list[str]) -> None:
                for line in lines:
                    write(stream, line)

            def post(lines: list[str]) -> None:
                loop.call_soon_threadsafe(deliver, lines)

            return post

        pumps = [
            _in_thread(lambda s=s: _pump(container, s, skip.get(s, 0), emit(s)))  # type: ignore[misc]
            for s in (Stream.STDOUT, Stream.STDERR)
        ]
        exited = _in_thread(container.wait)
        outcome: Outcome | None = None
        message = ""
        if not await _until(exited, cancel, timeout):
            if cancel is not None and cancel.requested:
                outcome, message = Outcome.CANCELLED, _cancel_message(cancel)
                stop_grace = grace if cancel.grace_period is None else cancel.grace_period
                system(f"cancel requested{': ' + cancel.reason if cancel.reason else ''}")
            else:
                outcome, message = Outcome.TIMED_OUT, f"timed out after {timeout:g}s"
                stop_grace = grace
                system(f"timeout of {timeout:g}s exceeded")
            system(f"stopping container {container.short_id} (grace period {stop_grace:g}s)")
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                await _in_thread(lambda: container.stop(timeout=int(max(stop_grace, 0) + 0.999)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), _STOP_SLACK)
        try:
            status = exited.result() if exited.done() else None
        except (docker.errors.DockerException, requests.RequestException) as exc:
            status = None
            system(f"lost the container's exit status: {_bounded(str(exc), 200)}")
        await asyncio.wait(pumps, timeout=_DRAIN_WAIT)
        exit_code = int(status["StatusCode"]) if status and "StatusCode" in status else None
        if exit_code is None:
            system("exit status unknown")
        elif exit_code > 128:
            system(f"exit code {exit_code} (signal {exit_code - 128})")
        else:
            system(f"exit code {exit_code}")
        if outcome is not None:
            return ExecutionResult(outcome, exit_code, message)
        if exit_code == 0:
            return ExecutionResult(Outcome.SUCCEEDED, 0, "")
        reason = f"exit code {exit_code}"
        if last_error.text:
            reason += f": {last_error.text}"
        if exit_code == 127:
            reason += f" (the command is not in image {ref}: a job needs an image with Python"
            reason += " and its packages, e.g. images/runtime)"
        return ExecutionResult(Outcome.FAILED, exit_code, _bounded(reason))

    async def _remove_after(self, container: Any, result: ExecutionResult | None) -> None:
        if self.settings.keep_failed and (result is None or result.outcome != Outcome.SUCCEEDED):
            # Renamed, so that an agent that restarts leaves it alone (recover skips it).
            kept = f"{container.name}{KEPT_SUFFIX}"
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                await _in_thread(lambda: container.rename(kept))
            log.info("keeping container %s (%s) of a failed attempt", kept, container.short_id)
            return
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            await _in_thread(lambda: container.remove(force=True))

    # ------------------------------------------------------------------ after a restart

    async def recover(self) -> list[Recovered]:
        def find() -> list[Any]:
            return list(
                self.client.containers.list(
                    all=True, filters={"label": f"{LABEL_AGENT}={self.settings.agent_id}"}
                )
            )

        found: list[Recovered] = []
        for container in await _in_thread(find):
            if container.name.endswith(KEPT_SUFFIX):
                continue  # a failed attempt's, kept for debugging
            labels = container.labels
            try:
                job_id = labels.get(LABEL_JOB, "")
                attempt = int(labels.get(LABEL_ATTEMPT, ""))
                grace = float(labels.get(LABEL_GRACE) or 10.0)
                limit = float(labels.get(LABEL_TIMEOUT) or 0.0)
                if not JOB_ID_RE.match(job_id) or attempt < 1:
                    raise ValueError(job_id)
            except ValueError:
                log.warning("container %s has malformed brinell labels; removing it", container.id)
                with contextlib.suppress(docker.errors.DockerException):
                    await _in_thread(lambda c=container: c.remove(force=True))  # type: ignore[misc]
                continue
            timeout = None
            if limit > 0:
                timeout = max(0.0, limit - _running_for(container))
            found.append(
                Recovered(
                    job_id=job_id,
                    attempt=attempt,
                    grace_period=grace,
                    timeout=timeout,
                    handle=container,
                    running=container.status == "running",
                )
            )
        return found

    async def resume(
        self,
        found: Recovered,
        skip: Mapping[Stream, int],
        *,
        on_line: LineCallback,
        on_start: StartCallback | None = None,
        cancel: CancelSignal | None = None,
    ) -> ExecutionResult:
        container = found.handle
        self._keep_alive()
        on_line(
            Stream.SYSTEM,
            f"re-attached to container {container.short_id} after an agent restart "
            f"({'running' if found.running else 'already exited'})",
        )
        digest = container.labels.get(LABEL_DIGEST, "")
        if on_start is not None:
            on_start(_pid(container), digest)
        result: ExecutionResult | None = None
        try:
            result = await self._supervise(
                container, skip, on_line, cancel, found.timeout, found.grace_period, digest
            )
        finally:
            await self._remove_after(container, result)
        return result

    async def discard(self, found: Recovered) -> None:
        container = found.handle
        log.info(
            "removing container %s of jobs/%s attempt %d: no longer this agent's",
            container.short_id,
            found.job_id,
            found.attempt,
        )
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            grace = int(found.grace_period + 0.999)
            await _in_thread(lambda: container.stop(timeout=grace))
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            await _in_thread(lambda: container.remove(force=True))


# --------------------------------------------------------------------------- helpers


def _pump(container: Any, stream: Stream, skip: int, emit: Callable[[list[str]], None]) -> None:
    """Follows one of the container's streams from its start, in lines; the first ``skip``
    lines (stored before a restart) are not passed on."""
    splitter = LineSplitter()
    chunks: Iterator[bytes] = container.logs(
        stdout=stream is Stream.STDOUT, stderr=stream is Stream.STDERR, stream=True, follow=True
    )

    def send(lines: list[str]) -> None:
        nonlocal skip
        if skip:
            dropped = min(skip, len(lines))
            lines, skip = lines[dropped:], skip - dropped
        if lines:
            emit(lines)

    try:
        for chunk in chunks:
            send(splitter.feed(chunk))
    except (docker.errors.DockerException, requests.RequestException):
        log.warning("the %s stream of container %s broke", stream.value, container.short_id)
    send(splitter.end())


def _pid(container: Any) -> int:
    with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
        container.reload()
        return int((container.attrs.get("State") or {}).get("Pid") or 0)
    return 0


def _running_for(container: Any) -> float:
    """Seconds since the container started (0 when unknown)."""
    started = (container.attrs.get("State") or {}).get("StartedAt") or ""
    if not started or started.startswith("0001-"):
        return 0.0
    # RFC 3339 with nanoseconds: keep microseconds for fromisoformat.
    main, _, frac = started.rstrip("Z").partition(".")
    text = main + (f".{frac[:6]}" if frac else "") + "+00:00"
    try:
        return max(0.0, time.time() - datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0.0


async def _until(
    future: asyncio.Future[Any], cancel: CancelSignal | None, timeout: float | None = None
) -> bool:
    """Waits for ``future``; False when a cancel or the timeout came first."""
    waiters: set[asyncio.Future[Any]] = {future}
    cancelled: asyncio.Task[None] | None = None
    if cancel is not None:
        cancelled = asyncio.create_task(cancel.wait())
        waiters.add(cancelled)
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if cancelled is not None:
            cancelled.cancel()
    return future.done()


def _cancel_message(cancel: CancelSignal | None) -> str:
    return f"cancelled: {cancel.reason}" if cancel is not None and cancel.reason else "cancelled"
