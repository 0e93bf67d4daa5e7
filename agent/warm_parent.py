"""The warm runtime's parent: imports once what jobs import, then forks one child per attempt.

    python warm_parent.py AGENT_PID FD [MODULE ...]

Started by the agent (agent/warm.py) with one end of a Unix socket pair as FD. It imports
Prefect, MLflow, the modules they import lazily on a job's first flow and run, and the
MODULEs given (``--warm-import``), reports ``ready`` and then serves requests, one message per
request (SOCK_SEQPACKET, JSON):

    agent -> parent  {"id", "kind": "script" | "module", "target", "argv", "cwd", "env"}
                     with the job's stdout and stderr pipes as passed descriptors
    parent -> agent  {"ready", "pid", "modules", "threads", "seconds", "names"}
                     {"id", "pid"}   the child runs (its pid is its process group)
                     {"id", "error"} it could not be forked
                     {"id", "exit"}  it ended: a return code as Popen reports it (-N: signal N)

A child is what ``python SCRIPT ARGS`` or ``python -m MODULE ARGS`` would be, started with the
job's environment and working directory: its own process group (the parent leads a session of
its own), stdin from
/dev/null, stdout and stderr on the job's pipes, ``sys.argv`` and ``sys.path`` as the
interpreter would set them (script or working directory first, then PYTHONPATH's entries, then
the parent's site paths). It leaves as the interpreter would — non-daemon threads joined, then
``atexit`` handlers (MLflow ends an active run there, Prefect drains its event and log workers)
— but with ``os._exit``, which skips the interpreter's teardown (seconds, for nothing).

Fork safety: the parent holds no thread, socket (but the one to the agent) or connection when
it forks; it reports its thread count with ``ready`` and refuses to fork when it has more than
one. It never talks to the control plane. When the agent dies (PR_SET_PDEATHSIG) or closes the
socket, the parent kills every child's process group and exits; a child dies with the parent
(PR_SET_PDEATHSIG: SIGKILL). A job that crashes takes only its child.

Run as a script, not a module: the agent's own package is not on the path, and the parent
removes its own folder from ``sys.path`` before importing anything else.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # this script's folder (agent/): never importable by a job

import atexit
import builtins
import contextlib
import ctypes
import importlib
import importlib.machinery
import io
import json
import os
import runpy
import select
import signal
import socket
import threading
import time
import traceback
import types

PR_SET_PDEATHSIG = 1
MAX_MESSAGE = 4 * 1024 * 1024
# What a job's first flow and MLflow run import lazily (≈2.4 s of a hello-world job when
# imported by each job): found by listing the modules a job had that the parent lacked.
# Modules missing from this installation are skipped.
PRELOAD = (
    "prefect",
    "prefect.flows",
    "prefect.tasks",
    "prefect.task_runners",
    "prefect.futures",
    "prefect.states",
    "prefect.context",
    "prefect.settings",
    "prefect.client.orchestration",
    "prefect.client.schemas",
    "prefect.client.schemas.actions",
    "prefect.client.schemas.objects",
    "prefect.client.schemas.filters",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.results",
    "prefect.logging.handlers",
    "prefect.logging.loggers",
    "prefect.events",
    "prefect.events.clients",
    "prefect.events.worker",
    "prefect.runner",
    "prefect.cache_policies",
    "prefect.transactions",
    "prefect.concurrency.v1.sync",
    "prefect.concurrency.sync",
    "prefect.utilities.engine",
    "prefect.utilities.callables",
    "httpx",
    "anyio",
    "anyio._backends._asyncio",
    "mlflow",
    "mlflow.tracking",
    "mlflow.tracking.fluent",
    "mlflow.tracking.client",
    "mlflow.tracking._tracking_service.client",
    "mlflow.tracking._tracking_service.utils",
    "mlflow.store.tracking.rest_store",
    "mlflow.store.tracking.file_store",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.artifact.artifact_repository_registry",
    "mlflow.store.artifact.local_artifact_repo",
    "mlflow.store.artifact.mlflow_artifacts_repo",
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.store.model_registry.rest_store",
    "mlflow.utils.rest_utils",
    "mlflow.utils.autologging_utils",
    "mlflow.entities",
    "mlflow.models",
    "mlflow.sklearn",
    "mlflow.pyfunc",
    "requests",
    "urllib3",
    "sqlalchemy",
    "sqlalchemy.dialects.sqlite",
    "alembic",
    "numpy",
    "yaml",
    "brinell.runtime",
    "brinell.graph",
)


def _prctl_death_signal(sig: int) -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def preload(modules: list[str]) -> int:
    """Imports what jobs would; a module that fails to import is left to the job."""
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    return len(sys.modules)


def top_level_names() -> list[str]:
    """The top-level names the parent has imported: a job folder or PYTHONPATH entry that
    holds one of them would be shadowed by the parent's copy, so that job runs cold."""
    return sorted({name.partition(".")[0] for name in sys.modules if not name.startswith("_")})


class Parent:
    def __init__(self, agent: int, conn: socket.socket) -> None:
        self.agent = agent
        self.conn = conn
        self.base_path = list(sys.path)
        # child pid -> request id
        self.children: dict[int, str] = {}
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    # ------------------------------------------------------------------ serving

    def send(self, message: dict[str, object]) -> None:
        self.conn.send(json.dumps(message).encode())  # one message: SOCK_SEQPACKET

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        while True:
            readable, _, _ = select.select([self.conn.fileno(), self.wake_r], [], [])
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 512):
                        pass
            self.reap()
            if self.conn.fileno() in readable:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.conn, MAX_MESSAGE, 2)
                except OSError:
                    data, fds = b"", []
                if not data:
                    self.shutdown()
                    return
                self.handle(data, fds)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            rid = self.children.pop(pid, None)
            if rid is not None:
                code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError):
                    self.send({"id": rid, "exit": code})

    def handle(self, data: bytes, fds: list[int]) -> None:
        rid = ""
        try:
            request = json.loads(data)
            rid = str(request["id"])
            if len(fds) != 2:
                raise ValueError(f"expected 2 descriptors (stdout, stderr), got {len(fds)}")
            if threading.active_count() > 1:
                raise RuntimeError(f"{threading.active_count()} threads: not safe to fork")
            pid = os.fork()
        except Exception as exc:  # noqa: BLE001 - reported to the agent, which runs cold
            for fd in fds:
                os.close(fd)
            self.send({"id": rid, "error": f"{type(exc).__name__}: {exc}"})
            return
        if pid == 0:
            try:
                code = self.child(request, fds[0], fds[1])
            except BaseException:  # noqa: BLE001 - the child must never return into serve()
                with contextlib.suppress(Exception):
                    traceback.print_exc()
                code = 1
            os._exit(code)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # (the child may already have done it, or run exec)
        for fd in fds:
            os.close(fd)
        self.children[pid] = rid
        self.send({"id": rid, "pid": pid})

    def shutdown(self) -> None:
        """The agent is gone: so is every job it started."""
        for pid in list(self.children):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ the child

    def child(self, request: dict[str, object], out: int, err: int) -> int:
        parent = os.getppid()
        os.setpgid(0, 0)  # as the parent does too: the group exists before the agent learns it
        _prctl_death_signal(signal.SIGKILL)
        if os.getppid() != parent:
            return 137  # the parent died before the request took effect
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.conn.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (null, out, err):
            if fd > 2:
                os.close(fd)

        env = {str(k): str(v) for k, v in dict(request["env"]).items()}  # type: ignore[call-overload]
        os.environ.clear()
        os.environ.update(env)
        os.chdir(str(request["cwd"]))
        kind, target = str(request["kind"]), str(request["target"])
        argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
        first = os.path.dirname(os.path.abspath(target)) if kind == "script" else os.getcwd()
        extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [first, *extra, *self.base_path]
        sys.argv[:] = argv
        sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
        # Settings that modules read once at import, read again from the job's environment.
        prefect_context = sys.modules.get("prefect.context")
        if prefect_context is not None:
            prefect_context.refresh_global_settings_context()
        # A fresh interpreter seeds NumPy's global generator from the OS: so does each child
        # (else every warm job would draw the same "random" numbers). `random` reseeds itself
        # after a fork.
        numpy_random = sys.modules.get("numpy.random")
        if numpy_random is not None:
            numpy_random.seed()
        return run_main(kind, target)


def run_main(kind: str, target: str) -> int:
    """Runs the job's main module and leaves as the interpreter would, without its teardown."""
    code = 0
    interrupted = False
    try:
        if kind == "script":
            run_script(target)
        else:
            fresh_main()  # runpy runs the module in __main__'s namespace: not in ours
            runpy._run_module_as_main(target)  # type: ignore[attr-defined]  # what -m runs
    except SystemExit as exc:
        code = exit_code(exc)
    except KeyboardInterrupt as exc:
        interrupted = True
        report(exc)
    except BaseException as exc:  # noqa: BLE001 - what the interpreter prints, then exit 1
        report(exc)
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads
    except SystemExit as exc:
        code = exit_code(exc)
    except BaseException:  # noqa: BLE001
        sys.excepthook(*sys.exc_info())
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def report(exc: BaseException) -> None:
    """Prints an uncaught exception as the interpreter would: without this file's frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    # (the hook prints the exception's own traceback, not the one it is given)
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)


def fresh_main() -> types.ModuleType:
    """An empty ``__main__``, as a new interpreter has."""
    main = types.ModuleType("__main__")
    main.__spec__ = None
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    return main


def run_script(path: str) -> None:
    """Runs a script as ``python SCRIPT`` does: in a fresh ``__main__`` whose ``__file__`` is
    the script's absolute path, ``sys.argv[0]`` left as the command wrote it (runpy would set
    both to the same path)."""
    main = fresh_main()
    main.__file__ = path
    main.__cached__ = None  # type: ignore[attr-defined]
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    with io.open_code(path) as f:
        source = f.read()
    exec(compile(source, path, "exec"), main.__dict__)  # noqa: S102 - the job's own code


def exit_code(exc: SystemExit) -> int:
    """What the interpreter makes of ``sys.exit(value)``."""
    value = exc.code
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    with contextlib.suppress(Exception):
        print(value, file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    agent, fd, modules = int(argv[0]), int(argv[1]), argv[2:]
    conn = socket.socket(fileno=fd)
    _prctl_death_signal(signal.SIGUSR2)
    parent = Parent(agent, conn)

    def agent_died(_signum: int, _frame: object) -> None:
        if os.getppid() != agent:
            parent.shutdown()
            os._exit(0)

    signal.signal(signal.SIGUSR2, agent_died)

    def stopped(_signum: int, _frame: object) -> None:
        parent.shutdown()
        os._exit(0)

    signal.signal(signal.SIGTERM, stopped)
    if os.getppid() != agent:
        return 0
    started = time.perf_counter()
    count = preload([*PRELOAD, *modules])
    parent.base_path = list(sys.path)
    parent.send(
        {
            "ready": True,
            "pid": os.getpid(),
            "modules": count,
            "threads": threading.active_count(),
            "seconds": round(time.perf_counter() - started, 3),
            "names": top_level_names(),
        }
    )
    parent.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
