"""An attempt's supervisor: the process executor's child, leader of the attempt's process group.

    python -I supervise.py AGENT_PID COMMAND...

It runs COMMAND in its own group and passes its exit status on unchanged (a command killed by
signal N kills the supervisor with N), so the executor sees what it would have seen without
it. What it adds: when the agent dies — even by SIGKILL, when it can clean up nothing — the
kernel signals the supervisor (PR_SET_PDEATHSIG), which kills the whole group, so no job keeps
running (on a GPU) while its requeued attempt runs elsewhere.

Run as a script with -I, not as a module: it imports nothing but the standard library, takes
milliseconds to start, and neither the job's PYTHONPATH nor its site-packages reach it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
# The signal the kernel sends when the agent dies; the handler checks that the parent really
# is gone, so the same signal sent by anything else is ignored.
DEATH_SIGNAL = signal.SIGUSR2


def _kill_group() -> None:
    try:
        os.killpg(os.getpgrp(), signal.SIGKILL)  # the supervisor dies with its group
    except OSError:
        os._exit(137)


def main(argv: list[str]) -> int:
    agent, command = int(argv[0]), argv[1:]

    def on_death(_signum: int, _frame: object) -> None:
        if os.getppid() != agent:
            _kill_group()

    def passed_on(_signum: int, _frame: object) -> None:
        """SIGTERM/SIGINT to the group reach the command too: the supervisor stays to report
        how it ends. (A handler, not SIG_IGN: exec resets handlers, not ignored signals.)"""

    signal.signal(DEATH_SIGNAL, on_death)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, passed_on)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0) != 0:
        print("brinell supervisor: prctl(PR_SET_PDEATHSIG) failed", file=sys.stderr)
    if os.getppid() != agent:  # the agent died before the request was in place
        _kill_group()
    child = os.fork()
    if child == 0:
        for sig in (DEATH_SIGNAL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"cannot run {command[0]}: {exc}", file=sys.stderr)
            os._exit(127)
    while True:
        try:
            _pid, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        killed_by = os.WTERMSIG(status)
        signal.signal(killed_by, signal.SIG_DFL)
        os.kill(os.getpid(), killed_by)
        return 128 + killed_by  # not reached: the same signal ends the supervisor
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
