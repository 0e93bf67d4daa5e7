"""The warm runtime, agent side: a pre-imported Python parent that forks one child per attempt.

A hello-world job (a three-task Prefect flow logging to MLflow) spends ≈5 s importing Prefect
and MLflow, ≈2.4 s importing what they load lazily and ≈2 s in interpreter teardown; its own
work takes milliseconds. The process executor therefore hands jobs whose command is a plain
``python SCRIPT ARGS`` or ``python -m MODULE ARGS`` to a parent process (agent/warm_parent.py)
that imported all that once and forks a child that runs the job as the interpreter would.
Everything else — shell commands, other programs, an entry point marked ``isolated: true``,
an interpreter option or PYTHON* variable the parent cannot honour, a job folder or plugin that
holds a module the parent already imported (the job would get the parent's copy) — runs cold,
as before, and the attempt's first system line says why.

The agent talks to the parent over a Unix socket pair (SOCK_SEQPACKET, one JSON message each
way per event; the job's stdout and stderr pipes travel as passed descriptors), never the
other way round, and the parent holds no channel to the control plane. A parent that dies is
started again for the next job; the jobs it was running end as killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shlex
import signal
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("brinell.agent.warm")

PARENT = Path(__file__).with_name("warm_parent.py")
MAX_MESSAGE = 4 * 1024 * 1024
# How long a fork may take to be confirmed before the job runs cold instead.
FORK_TIMEOUT = 30.0
# PYTHON* variables a child honours itself; any other must be the parent's own value.
_CHILD_SETS = frozenset({"PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"})
# Characters the shell would act on outside quotes (inside double quotes: $ ` \).
_SHELL_SPECIAL = frozenset("$`\\*?[]{}~;&|<>()#!\n\r")
_INTERPRETERS = frozenset(
    {"python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}"}
)


@dataclass(frozen=True)
class Launch:
    """What a child runs: ``python SCRIPT ARGS`` (kind "script") or ``python -m MODULE ARGS``."""

    kind: str
    target: str
    argv: tuple[str, ...]


def _plain_words(command: str) -> list[str] | None:
    """The command's words when the shell would do nothing but split and unquote it."""
    quote = ""
    for c in command:
        if quote == "'":
            quote = "" if c == "'" else quote
        elif quote == '"':
            if c in "$`\\":
                return None
            quote = "" if c == '"' else quote
        elif c in "'\"":
            quote = c
        elif c in _SHELL_SPECIAL:
            return None
    if quote:
        return None
    try:
        return shlex.split(command)
    except ValueError:
        return None


def launch_for(command: str, python: str, cwd: Path) -> Launch | str:
    """The child to run for an entry point's shell command, or why it must run cold."""
    words = _plain_words(command)
    if not words:
        return "the command is not a plain `python SCRIPT` or `python -m MODULE` command"
    program, args = words[0], words[1:]
    if program not in _INTERPRETERS and program != python:
        return f"the command runs {program!r}, not Python"
    while args and args[0] == "-u":  # unbuffered: the child's streams already are
        args = args[1:]
    if not args:
        return "the command starts an interactive interpreter"
    if args[0] == "-m" and len(args) > 1:
        return Launch("module", args[1], (args[1], *args[2:]))
    if args[0].startswith("-"):
        return f"the interpreter option {args[0]!r} needs a fresh interpreter"
    script = args[0]
    if not (cwd / script).is_file():
        return f"{script!r} is not a file in the entry point"
    return Launch("script", str(cwd / script), (script, *args[1:]))


def top_level_names(folder: Path) -> set[str]:
    """The modules and packages a folder on ``sys.path`` provides."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry.is_dir() and entry.name.isidentifier():
                names.add(entry.name)
            elif entry.suffix in (".py", ".so", ".pyc") or entry.name.endswith(".pth"):
                names.add(entry.name.split(".", 1)[0])
    return names


class WarmProcess:
    """A forked child, as the executor sees a process: pid (its process group), returncode,
    the read ends of its stdout and stderr."""

    def __init__(self, pid: int, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader):
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._exited = asyncio.Event()
        self.transports: list[asyncio.BaseTransport] = []

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def close(self) -> None:
        for transport in self.transports:
            transport.close()


class WarmRuntime:
    """Starts and supervises the warm parent; forks children through it."""

    def __init__(
        self,
        python: str = sys.executable,
        modules: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.python = python
        self.modules = tuple(modules)
        self.env = dict(os.environ if env is None else env)
        self.env.pop("PYTHONPATH", None)
        self.env["PYTHONUNBUFFERED"] = "1"
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._ready: asyncio.Future[dict[str, object]] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._children: dict[str, WarmProcess] = {}
        self.names: frozenset[str] = frozenset()
        self.starts = 0
        self.closed = False

    # ------------------------------------------------------------------ the parent

    def start_soon(self) -> None:
        """Starts the parent in the background (it imports for a few seconds)."""
        if self.closed or (self._ready is not None and not self._ready.done()):
            return
        if self._ready is not None and self._ready.done() and self.alive:
            return
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        loop.create_task(self._start(self._ready), name="warm-runtime-start")

    @property
    def ready(self) -> bool:
        """Whether the parent has imported and is there to fork."""
        ready = self._ready
        return ready is not None and ready.done() and ready.exception() is None and self.alive

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._sock is not None

    async def _start(self, ready: asyncio.Future[dict[str, object]]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.starts += 1
            proc = await asyncio.create_subprocess_exec(
                self.python,
                str(PARENT),
                str(os.getpid()),
                str(theirs.fileno()),
                *self.modules,
                pass_fds=[theirs.fileno()],
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            if not ready.done():
                ready.set_exception(RuntimeError(f"cannot start the warm runtime: {exc}"))
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        self._proc, self._sock = proc, ours
        assert proc.stderr is not None
        asyncio.get_running_loop().create_task(self._relay(proc.stderr))
        self._reader = asyncio.get_running_loop().create_task(self._read(ours, proc, ready))

    async def _relay(self, stderr: asyncio.StreamReader) -> None:
        """The parent's own stderr (a job's goes to the job) into the agent's log."""
        while line := await stderr.readline():
            log.warning("warm runtime: %s", line.decode(errors="replace").rstrip())

    async def _read(
        self,
        sock: socket.socket,
        proc: asyncio.subprocess.Process,
        ready: asyncio.Future[dict[str, object]],
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(sock, MAX_MESSAGE)
                if not data:
                    break
                message = json.loads(data)
                if message.get("ready"):
                    self.names = frozenset(str(n) for n in message.pop("names", []))
                    log.info(
                        "warm runtime ready: pid %s, %s modules in %ss, %s thread(s)",
                        message.get("pid"),
                        message.get("modules"),
                        message.get("seconds"),
                        message.get("threads"),
                    )
                    if not ready.done():
                        ready.set_result(message)
                    continue
                rid = str(message.get("id"))
                if "exit" in message:
                    child = self._children.pop(rid, None)
                    if child is not None:
                        child.exited(int(message["exit"]))
                    continue
                pending = self._pending.pop(rid, None)
                if pending is not None and not pending.done():
                    if "pid" in message:
                        pending.set_result(int(message["pid"]))
                    else:
                        pending.set_exception(RuntimeError(str(message.get("error"))))
                elif "pid" in message:
                    # Forked after its job gave up waiting (and ran cold): it must not run.
                    with contextlib.suppress(OSError):
                        os.killpg(int(message["pid"]), signal.SIGKILL)
        except (OSError, ValueError) as exc:
            log.warning("warm runtime: connection lost: %s", exc)
        finally:
            await self._lost(sock, proc, ready)

    async def _lost(
        self,
        sock: socket.socket,
        proc: asyncio.subprocess.Process,
        ready: asyncio.Future[dict[str, object]],
    ) -> None:
        """The parent is gone: its children died with it (PR_SET_PDEATHSIG); make sure."""
        sock.close()
        if self._sock is sock:
            self._sock = None
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        code = await proc.wait()
        # One that had been ready starts again at once; one that died while importing starts
        # again only when a job next asks (no restart loop; jobs run cold meanwhile).
        again = ready.done() and ready.exception() is None and not self.closed
        if not self.closed:
            log.warning(
                "warm runtime exited (%s); %s",
                code,
                "starting it again" if again else "it starts again for the next job",
            )
        if not ready.done():
            ready.set_exception(RuntimeError(f"the warm runtime exited ({code}) while starting"))
        for pending in self._pending.values():
            if not pending.done():
                pending.set_exception(RuntimeError("the warm runtime exited"))
        self._pending.clear()
        for child in self._children.values():
            if child.pid > 0:
                with contextlib.suppress(OSError):
                    os.killpg(child.pid, signal.SIGKILL)
            child.exited(-signal.SIGKILL)
        self._children.clear()
        if again:
            self.start_soon()

    async def close(self) -> None:
        self.closed = True
        if self._sock is not None:
            self._sock.close()  # the parent kills its children and exits on end of file
            self._sock = None
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    # ------------------------------------------------------------------ children

    def cold_reason(self, launch: Launch, env: Mapping[str, str], cwd: Path) -> str:
        """Why this child would not run as a fresh interpreter would ("" when it would)."""
        for key, value in env.items():
            if key.startswith("PYTHON") and key not in _CHILD_SETS and self.env.get(key) != value:
                return f"{key} is set for the job, and only a fresh interpreter reads it"
        folders = [Path(launch.target).parent if launch.kind == "script" else cwd]
        folders += [Path(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        for folder in folders:
            clash = sorted(top_level_names(folder) & self.names)
            if clash:
                return (
                    f"{folder} holds {', '.join(clash[:5])}, which the warm runtime has "
                    "imported already"
                )
        return ""

    async def spawn(self, launch: Launch, cwd: Path, env: Mapping[str, str]) -> WarmProcess:
        """Forks a child running ``launch``; raises RuntimeError when the parent cannot."""
        sock = self._sock
        if sock is None or not self.alive:
            raise RuntimeError("the warm runtime is not running")
        loop = asyncio.get_running_loop()
        rid = str(next(self._ids))
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        request = {
            "id": rid,
            "kind": launch.kind,
            "target": launch.target,
            "argv": list(launch.argv),
            "cwd": str(cwd),
            "env": dict(env),
        }
        try:
            stdout, out_t = await _reader(loop, out_r)
            stderr, err_t = await _reader(loop, err_r)
        except BaseException:
            for fd in (out_r, err_r, out_w, err_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        # Registered before the request goes: its exit may follow its pid at once.
        child = WarmProcess(0, stdout, stderr)
        child.transports = [out_t, err_t]
        self._children[rid] = child
        forked: asyncio.Future[int] = loop.create_future()
        self._pending[rid] = forked
        try:
            data = json.dumps(request).encode()
            if len(data) > MAX_MESSAGE:
                raise RuntimeError("the job's environment is too large for the warm runtime")
            while True:
                try:
                    socket.send_fds(sock, [data], [out_w, err_w])
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.005)
            child.pid = await asyncio.wait_for(forked, FORK_TIMEOUT)
        except BaseException:
            self._pending.pop(rid, None)
            self._children.pop(rid, None)
            child.close()
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        return child


async def _reader(
    loop: asyncio.AbstractEventLoop, fd: int
) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    reader = asyncio.StreamReader(limit=2**20)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader, transport
