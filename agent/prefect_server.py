"""A local Prefect server, started and supervised by the agent (``--prefect-api-url auto``).

Without a PREFECT_API_URL every job would start its own ephemeral Prefect server (≈10-20 s
per job); one long-lived server per agent answers every job at once. It listens on loopback
only, keeps its SQLite database under ``work_dir/prefect``, and has its UI and analytics off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("brinell.agent.prefect")

# Started through this shim so the server dies with the agent even when the agent is killed
# with SIGKILL (PR_SET_PDEATHSIG survives exec); argv[1] is the agent's pid.
_SHIM = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)  # the agent died before prctl took effect
os.execv(sys.executable, [sys.executable, "-m", "prefect", *sys.argv[2:]])
"""

_LOG_MAX_BYTES = 10 * 1024 * 1024


class PrefectServerError(RuntimeError):
    """The server did not come up; the message includes the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (another process could still take it before the server binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(url: str) -> bool:
    # Loopback must never go through an HTTP proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serves_ui(api_url: str) -> bool:
    """Whether the Prefect server behind ``api_url`` serves its UI (the "View at" links that
    Prefect prints in a job's log lead there); the agent's own server runs without it."""
    root = api_url.rstrip("/").removesuffix("/api") + "/"
    return _healthy(root)


class PrefectServer:
    """Owns one ``prefect server start`` process: start, health-wait, restart, stop."""

    def __init__(
        self,
        home: Path,
        *,
        python: str = sys.executable,
        host: str = "127.0.0.1",
        startup_timeout: float = 120.0,
    ) -> None:
        self.home = home
        self.python = python
        self.host = host
        self.startup_timeout = startup_timeout
        self.url: str | None = None
        self._port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self.last_error: str | None = None

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def environment(self) -> dict[str, str]:
        """The server's environment: its own home and database, no UI, no analytics."""
        env = dict(os.environ)
        for key in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_PROFILE"):
            env.pop(key, None)
        env["PREFECT_HOME"] = str(self.home)
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = (
            f"sqlite+aiosqlite:///{self.home / 'prefect.db'}"
        )
        env["PREFECT_SERVER_UI_ENABLED"] = "false"
        env["PREFECT_UI_ENABLED"] = "false"
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        env["DO_NOT_TRACK"] = "1"
        home = env.get("HOME")
        if not home or not os.path.isdir(home):
            # Prefect writes under HOME in places; a service account may have none.
            fallback = self.home / "home"
            fallback.mkdir(parents=True, exist_ok=True)
            env["HOME"] = str(fallback)
        return env

    def command(self, port: int) -> list[str]:
        args = [
            "server",
            "start",
            "--host",
            self.host,
            "--port",
            str(port),
            "--no-ui",
            "--analytics-off",
        ]
        if sys.platform == "linux":
            return [self.python, "-c", _SHIM, str(os.getpid()), *args]
        return [self.python, "-m", "prefect", *args]

    async def start(self) -> str:
        """Starts the server and waits until /api/health answers; returns the API URL.

        Keeps the port of an earlier run when it is still free, so jobs started before a
        restart keep a valid PREFECT_API_URL.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > _LOG_MAX_BYTES:
                self.log_path.replace(self.log_path.with_suffix(".log.1"))
        port = self._port if self._port is not None and _port_free(self.host, self._port) else None
        if port is None:
            port = free_port(self.host)
        base = f"http://{self.host}:{port}"
        log.info("starting local Prefect server at %s/api (log: %s)", base, self.log_path)
        with open(self.log_path, "ab") as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(port),
                cwd=self.home,
                env=self.environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        started = time.monotonic()
        proc = self._proc
        if self._stopping:  # stop() ran while the process was being created
            await self._terminate(proc)
            raise PrefectServerError("the agent is stopping")
        while True:
            if await asyncio.to_thread(_healthy, f"{base}/api/health"):
                break
            if proc.returncode is not None:
                raise PrefectServerError(
                    f"the Prefect server exited with code {proc.returncode} while starting; "
                    f"end of {self.log_path}:\n{self._log_tail()}"
                )
            if time.monotonic() - started > self.startup_timeout:
                await self._terminate(proc)
                raise PrefectServerError(
                    f"the Prefect server did not answer within {self.startup_timeout:g}s; "
                    f"end of {self.log_path}:\n{self._log_tail()}"
                )
            await asyncio.sleep(0.25)
        self._port = port
        self.url = f"{base}/api"
        self.last_error = None
        self._ready.set()
        elapsed = time.monotonic() - started
        log.info("local Prefect server ready at %s after %.1fs", self.url, elapsed)
        return self.url

    async def wait_ready(self, timeout: float | None = None) -> str | None:
        """The API URL once the server is up; None when it is not up within ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.url if self._ready.is_set() else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def supervise(self) -> None:
        """Keeps the server running until stop(): restarts it with backoff when it dies."""
        delay = 1.0
        while not self._stopping:
            try:
                await self.start()
            except PrefectServerError as exc:
                if self._stopping:
                    return
                self.last_error = str(exc)
                log.error("%s", exc)
            except OSError as exc:
                self.last_error = f"cannot start the Prefect server: {exc}"
                log.error("%s", self.last_error)
            else:
                delay = 1.0
                assert self._proc is not None
                code = await self._proc.wait()
                self._ready.clear()
                if self._stopping:
                    return
                self.last_error = f"the Prefect server exited with code {code}"
                log.error("%s; restarting it. Its log ends:\n%s", self.last_error, self._log_tail())
            if self._stopping:
                return
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, 60.0)

    async def stop(self, grace: float = 10.0) -> None:
        """Stops the server (SIGTERM to its group, SIGKILL after ``grace``)."""
        self._stopping = True
        self._ready.clear()
        if self._proc is not None:
            await self._terminate(self._proc, grace)
            log.info("local Prefect server stopped")

    async def _terminate(self, proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        # Uvicorn may have left helpers in the group; they go with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
