"""Fault soak: many short jobs on real agents while agents and a control plane are killed.

Starts real processes and mocks nothing: a throwaway PostgreSQL (as the tests start it; or
``--database-url``), one control plane (or, with ``--replicas 2``, two on that one database,
each with its own data directory, the agents split between them), ``--agents`` agent
processes (process executor, no Prefect), and submits ``--jobs`` short jobs (an entry point
that sleeps 0.1-1 s in a few steps, printing a line each step and ``done`` at the end). While
they run it injects faults:

- every ``--kill-every`` seconds (randomized) a SIGKILL of a random live agent (the agent
  alone, as a crash would; its jobs' supervisors then kill the jobs), restarted with the same
  id and work directory 0.5-1.5 times ``--restart-after`` seconds later (so some come back
  before their attempts' lease runs out and some after);
- once, when ``--cp-kill-at`` of the jobs have run, a SIGKILL of a control plane (one of the
  replicas with two), restarted on the same port ``--cp-down`` seconds later.

At the end it prints a table and exits 1 if an invariant fails:

- every job submitted exists and ends SUCCEEDED;
- no job succeeds twice (two attempts SUCCEEDED in the shared database's attempts table);
- no job's ``done`` line is in two attempts' logs, and no job runs to its end twice (each
  attempt that gets there also touches a marker file, outside the control plane's view),
  unless the earlier attempt's agent was killed after the end and before it could report
  it (within REPORT_SLACK, or while its control plane was down): the README's "an attempt
  lost half-way is run again", counted apart;
- every requeue follows a kill of the attempt's agent: a control-plane restart requeues no
  attempt that had started (one assigned as its replica died, never delivered, is requeued
  when its agent comes back without it; counted apart);
- the final attempt's log is complete and in order;
- no job process outlives the run (checked once all jobs ended, and once the agents
  stopped).

It also measures the time from an agent's kill to each of its lost jobs' next attempt
RUNNING (from the attempts table), in steps, and the throughput.

Usage: python bench/soak.py [--jobs 200] [--agents 4] [--slots 2] [--replicas 1|2]
       [--database-url URL] [--seed N] [--lease-duration 5] [--agent-args ARGS] [--keep]
       (--help for the fault schedule's options)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# tests.conftest sets BRINELL_BOOTSTRAP_TOKEN and BRINELL_TOKEN (one admin token for the
# servers, the agents and this client) and has the process helpers the e2e tests use.
from brinell import Client, JobState, LogStream  # noqa: E402
from brinell.types import Job  # noqa: E402
from tests.conftest import Proc, free_port, fresh_pg_database, start_server  # noqa: E402
from tests.e2e.conftest import start_agent  # noqa: E402

MLPROJECT = """\
name: soak
entry_points:
  main:
    parameters:
      seconds: {type: float, default: 0.5}
      lines: {type: int, default: 3}
    command: "python soakjob.py {seconds} {lines}"
"""
# Prints its attempt, `lines` lines spread over `seconds`, then `done`; then touches
# $SOAK_MARKS/JOB.ATTEMPT.PID: a record of every attempt that ran to its end, kept outside
# the control plane (which stores only the current attempt's log lines).
JOB_PY = """\
import os, sys, time
seconds, lines = float(sys.argv[1]), int(sys.argv[2])
job, attempt = os.environ["BRINELL_JOB_ID"], os.environ["BRINELL_ATTEMPT"]
print(f"start attempt={attempt}", flush=True)
for i in range(lines):
    time.sleep(seconds / lines)
    print(f"line {i}", flush=True)
print("done", flush=True)
with open(os.path.join(os.environ["SOAK_MARKS"], f"{job}.{attempt}.{os.getpid()}"), "w"):
    pass
"""
UNFINISHED = "state=PENDING,QUEUED,ASSIGNED,RUNNING"
# Seconds an agent may take to report an attempt's end: one killed sooner after the end (and
# whose control plane was up) explains a rerun of that attempt.
REPORT_SLACK = 2.0


@dataclass
class Kill:
    what: str  # an agent id, or a replica's name
    at: float  # time.time()
    back: float | None = None  # when it answered again


@dataclass
class Attempt:
    job: str
    number: int
    agent: str
    state: str
    message: str
    create: float
    start: float | None
    end: float | None


@dataclass
class Fleet:
    """The control planes and agents, and the faults done to them."""

    tmp: Path
    database_url: str
    lease: float
    replicas: int
    agents: int
    slots: int
    agent_args: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    servers: list[Proc | None] = field(default_factory=list)
    fleet: dict[str, Proc | None] = field(default_factory=dict)
    home: dict[str, int] = field(default_factory=dict)  # agent id -> replica index
    kills: list[Kill] = field(default_factory=list)
    cp_kills: list[Kill] = field(default_factory=list)

    def target(self, r: int) -> str:
        return f"127.0.0.1:{self.ports[r]}"

    def start_server(self, r: int) -> None:
        proc, _ = start_server(
            self.tmp / f"server-{r}",
            self.ports[r],
            "--database-url",
            self.database_url,
            "--mlflow-tracking-uri",
            "none",
            "--replica-id",
            f"replica-{r}",
            "--lease-duration",
            str(self.lease),
        )
        self.servers[r] = proc
        for kill in self.cp_kills:
            if kill.what == f"replica-{r}" and kill.back is None:
                kill.back = time.time()

    def start_agent(self, agent_id: str) -> None:
        r = self.home[agent_id]
        self.fleet[agent_id] = start_agent(
            self.target(r),
            self.tmp / agent_id,
            "none",
            agent_id,
            self.slots,
            "--grace-period",
            "2",
            "--log-level",
            "WARNING",
            *self.agent_args,
            env={"SOAK_MARKS": str(self.tmp / "marks")},
        )

    def up(self) -> None:
        for r in range(self.replicas):
            self.ports.append(free_port())
            self.servers.append(None)
            self.start_server(r)
        for i in range(self.agents):
            agent_id = f"soak-{i}"
            self.home[agent_id] = i % self.replicas
            self.start_agent(agent_id)

    def kill_agent(self, agent_id: str) -> None:
        proc = self.fleet[agent_id]
        assert proc is not None
        proc.proc.send_signal(signal.SIGKILL)  # the agent alone: its jobs are in other groups
        self.kills.append(Kill(agent_id, time.time()))
        proc.proc.wait(30)
        self.fleet[agent_id] = None

    def kill_server(self, r: int) -> None:
        proc = self.servers[r]
        assert proc is not None
        proc.proc.send_signal(signal.SIGKILL)
        self.cp_kills.append(Kill(f"replica-{r}", time.time()))
        proc.proc.wait(30)
        proc.stop()
        self.servers[r] = None

    def down(self) -> None:
        for agent in self.fleet.values():
            if agent is not None:
                agent.stop()
        for server in self.servers:
            if server is not None:
                server.stop()


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    """``url``, or a fresh database on a PostgreSQL started for this run (as the tests do)."""
    if url:
        yield url
        return
    from tests import conftest

    gen = conftest.postgres_url.__wrapped__()  # type: ignore[attr-defined]
    try:
        base = next(gen)
    except BaseException as exc:  # pytest.skip raises a BaseException
        raise SystemExit(f"cannot start PostgreSQL ({exc}); pass --database-url") from exc
    try:
        yield fresh_pg_database(base)
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)


def attempts_of(url: str, jobs: set[str]) -> list[Attempt]:
    """Every attempt of these jobs, read from the shared database (the API shows only the
    current one)."""
    from sqlalchemy import create_engine, text

    if url.startswith("postgresql://"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)

    def ts(value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return float(value.timestamp())

    out = []
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT job_id, number, agent_id, state, message, create_time, start_time, "
                "end_time FROM attempts"
            )
        )
        for row in rows:
            if row[0] in jobs:
                create = ts(row[5])
                assert create is not None
                out.append(
                    Attempt(row[0], row[1], row[2], row[3], row[4], create, ts(row[6]), ts(row[7]))
                )
    engine.dispose()
    return out


def run_processes(marks: Path) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of this run's live processes: what our agents
    started, whose environment (inherited from the agents) names our marker directory."""
    found = {}
    needle = f"SOAK_MARKS={marks}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[0] != "Z":
            found[int(entry.name)] = (int(stat[1]), cmdline.strip())
    return found


def strays(marks: Path, agents: set[int], settle: float = 5.0) -> list[str]:
    """Processes of this run that should not be there once every job has ended: anything
    but the live agents and their warm runtimes (a direct child running warm_parent.py).
    Waits up to ``settle`` seconds for them to go."""
    deadline = time.monotonic() + settle
    while True:
        procs = run_processes(marks)
        out = []
        for pid, (ppid, cmd) in sorted(procs.items()):
            if pid in agents or (ppid in agents and "warm_parent.py" in cmd):
                continue
            chain, up = [], ppid
            while up in procs and up not in chain:
                chain.append(up)
                up = procs[up][0]
            orphan = "" if up in agents else ", no live agent above it"
            out.append(f"pid {pid} (parent {ppid}{orphan}): {cmd[:160]}")
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def completions(marks: Path) -> dict[str, list[tuple[int, float]]]:
    """job id -> (attempt, when) of each attempt that ran to its end."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for entry in os.scandir(marks):
        job, attempt, _pid = entry.name.split(".")
        with contextlib.suppress(OSError):
            out[job].append((int(attempt), entry.stat().st_mtime))
    return out


class Submitter(threading.Thread):
    """Submits the jobs (round robin over the replicas), each with its own request id, so a
    submit retried across a control-plane restart makes no second job."""

    def __init__(
        self, clients: list[Client], experiment: str, entry_point: str, args: argparse.Namespace
    ) -> None:
        super().__init__(daemon=True)
        self.clients, self.experiment, self.entry_point = clients, experiment, entry_point
        self.args = args
        rng = random.Random(args.seed)
        self.params = [
            {"seconds": round(rng.uniform(0.1, 1.0), 3), "lines": rng.randint(2, 5)}
            for _ in range(args.jobs)
        ]
        self.ids: list[str] = []
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            for i, params in enumerate(self.params):
                client = self.clients[i % len(self.clients)]
                job = client.jobs.submit(
                    self.experiment,
                    self.entry_point,
                    params,
                    max_attempts=self.args.max_attempts,
                    request_id=f"{self.experiment}-{i}",
                )
                self.ids.append(job.id)
                if self.args.submit_rate > 0:
                    time.sleep(1 / self.args.submit_rate)
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()


def unfinished(clients: list[Client], fleet: Fleet, experiment: str) -> bool | None:
    """Whether a job of ours is not final yet (None: no live replica answered)."""
    for r, client in enumerate(clients):
        if fleet.servers[r] is None:
            continue
        try:
            first = next(
                iter(
                    client.jobs.list(
                        f"{UNFINISHED} experiment=experiments/{experiment}", page_size=1
                    )
                ),
                None,
            )
        except Exception:
            continue
        return first is not None
    return None


def soak(fleet: Fleet, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    tmp = fleet.tmp
    marks = tmp / "marks"
    # Unary calls here retry an UNAVAILABLE control plane for at most 3 s, so the fault loop
    # never waits out a restart; the submitter's clients wait up to 60 s.
    polls = [Client(fleet.target(r), timeout=3) for r in range(fleet.replicas)]
    submits = [Client(fleet.target(r), timeout=60) for r in range(fleet.replicas)]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connected = {a.id for a in polls[0].agents.list(filter="state=CONNECTED")}
            except Exception:
                connected = set()
            if connected >= set(fleet.fleet):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"agents did not connect: {sorted(set(fleet.fleet) - connected)}")
            time.sleep(0.2)
        project = tmp / "project"
        project.mkdir()
        (project / "MLproject").write_text(MLPROJECT)
        (project / "soakjob.py").write_text(JOB_PY)
        experiment = f"soak-{int(time.time())}-{args.seed}"
        submits[0].experiments.create(experiment)
        ep, _ = submits[0].entry_points.push(project)
        submitter = Submitter(submits, experiment, ep.id, args)
        print(
            f"soak: {args.jobs} jobs, {args.agents} agents x {args.slots} slots, "
            f"{args.replicas} control plane(s), lease {args.lease_duration:g} s, seed {args.seed}",
            flush=True,
        )
        start = time.monotonic()
        submitter.start()
        t0 = time.time()

        restarts: list[tuple[float, str]] = []  # (when, agent id or "replica-R")
        next_kill = time.monotonic() + rng.uniform(0.5, 1.5) * args.kill_every
        cp_killed = False
        last_poll = 0.0
        finished_at: float | None = None
        hard_deadline = start + args.timeout
        while True:
            now = time.monotonic()
            for due, what in sorted(restarts):
                if due <= now:
                    restarts.remove((due, what))
                    if what.startswith("replica-"):
                        fleet.start_server(int(what.split("-")[1]))
                        print(f"  {time.time() - t0:6.1f} s  {what} restarted", flush=True)
                    else:
                        fleet.start_agent(what)
                        print(f"  {time.time() - t0:6.1f} s  {what} restarted", flush=True)
            done_jobs = len(os.listdir(marks))  # attempts that ran to their end
            if now >= next_kill:
                live = [a for a, p in fleet.fleet.items() if p is not None]
                if len(live) > 1:
                    victim = rng.choice(live)
                    fleet.kill_agent(victim)
                    # Back before its lease ends or after it (the two ways a lost attempt is
                    # found): a downtime of 0.5-1.5 times --restart-after.
                    downtime = rng.uniform(0.5, 1.5) * args.restart_after
                    restarts.append((time.monotonic() + downtime, victim))
                    print(f"  {time.time() - t0:6.1f} s  SIGKILL {victim}", flush=True)
                next_kill = now + rng.uniform(0.5, 1.5) * args.kill_every
            if not cp_killed and done_jobs >= args.cp_kill_at * args.jobs:
                cp_killed = True
                r = rng.randrange(fleet.replicas)
                fleet.kill_server(r)
                restarts.append((time.monotonic() + args.cp_down, f"replica-{r}"))
                print(
                    f"  {time.time() - t0:6.1f} s  SIGKILL control plane replica-{r} "
                    f"({done_jobs} attempts done)",
                    flush=True,
                )
            if submitter.finished.is_set() and now - last_poll > 0.5:
                last_poll = now
                if submitter.error is not None:
                    raise SystemExit(f"submitting failed: {submitter.error!r}")
                if unfinished(polls, fleet, experiment) is False:
                    finished_at = time.monotonic()
                    break
            if now > hard_deadline:
                print(f"soak: jobs still unfinished after {args.timeout:g} s", flush=True)
                break
            time.sleep(0.05)
        # Bring back whatever is down, so its agents can report (nothing should be pending).
        for _due, what in sorted(restarts):
            if what.startswith("replica-"):
                fleet.start_server(int(what.split("-")[1]))
            else:
                fleet.start_agent(what)
        ended = time.monotonic()
        left = strays(marks, {p.proc.pid for p in fleet.fleet.values() if p is not None})

        reader = polls[0]
        jobs = {
            j.id: j for j in reader.jobs.list(f"experiment=experiments/{experiment}", page_size=500)
        }

        def logs(job_id: str) -> list[Any]:
            with Client(fleet.target(0), timeout=60) as c:
                return list(c.jobs.logs(job_id))

        with ThreadPoolExecutor(4) as pool:
            log_lines = dict(zip(jobs, pool.map(logs, jobs), strict=True))
        return {
            "submitted": list(submitter.ids),
            "jobs": jobs,
            "logs": log_lines,
            "attempts": attempts_of(fleet.database_url, set(jobs)),
            "completions": completions(marks),
            "strays": left,
            "elapsed": (finished_at or ended) - start,
            "stuck": finished_at is None,
            "experiment": experiment,
        }
    finally:
        for c in polls + submits:
            c.close()


def killed_between(fleet: Fleet, agent: str, after: float, before: float | None) -> Kill | None:
    """The first kill of ``agent`` in [after, before]."""
    for kill in sorted(fleet.kills, key=lambda k: k.at):
        if kill.what == agent and kill.at >= after and (before is None or kill.at <= before):
            return kill
    return None


def check(fleet: Fleet, result: dict[str, Any], wall: float) -> bool:
    jobs: dict[str, Job] = result["jobs"]
    submitted: list[str] = result["submitted"]
    by_job: dict[str, dict[int, Attempt]] = defaultdict(dict)
    for a in result["attempts"]:
        by_job[a.job][a.number] = a
    states = Counter(j.state for j in jobs.values())
    not_final = [j for j in jobs.values() if not j.is_final]
    other_final = [j for j in jobs.values() if j.is_final and j.state != JobState.SUCCEEDED]
    lost = sorted(set(submitted) - set(jobs))
    extra = sorted(set(jobs) - set(submitted))

    # Succeeded twice: more than one attempt SUCCEEDED, or the succeeded one is not current.
    twice: list[tuple[str, list[int], int]] = []
    for job_id, job in jobs.items():
        won = [n for n, a in by_job[job_id].items() if a.state == "SUCCEEDED"]
        if len(won) > 1 or (job.state == JobState.SUCCEEDED and won != [job.attempt]):
            twice.append((job_id, won, job.attempt))

    def explained(job_id: str, attempt: int, when: float) -> str | None:
        """Why an earlier attempt that got to its end (at ``when``) was not reported, if a
        fault explains it: its agent was killed at most REPORT_SLACK seconds later (give or
        take the supervisor's reaction), or later than that but while its control plane was
        down (killed at most a second after the end) and before the agent was back on it."""
        a = by_job[job_id].get(attempt)
        if a is None or a.state == "SUCCEEDED" or attempt == jobs[job_id].attempt:
            return None
        kill = killed_between(fleet, a.agent, when - 0.5, a.end)
        if kill is None:
            return None
        gap = kill.at - when
        why = f"attempt {attempt} on {a.agent} ended {gap:.2f} s before its agent's SIGKILL"
        home = f"replica-{fleet.home[a.agent]}"
        for c in fleet.cp_kills:
            if c.what == home and c.at - 1 <= when and kill.at <= (c.back or kill.at) + 10:
                return f"{why}, {home} down (killed {c.at - when:+.2f} s from the end)"
        return why if gap <= REPORT_SLACK else None

    done_multi: list[tuple[str, list[int]]] = []
    done_explained: list[tuple[str, list[int]]] = []
    incomplete: list[tuple[str, list[str]]] = []
    starts: Counter[str] = Counter()  # how final attempts started (the agent's own lines)
    for job_id, lines in result["logs"].items():
        job = jobs[job_id]
        out = [ln for ln in lines if ln.stream == LogStream.STDOUT]
        done_at: dict[int, float] = {}
        for ln in out:
            if ln.text == "done" and ln.attempt not in done_at:
                # When it ended: its marker's time (the log line's is when the control plane
                # stored it, which may be much later: lines are replayed after an outage).
                marked = [t for n, t in result["completions"].get(job_id, []) if n == ln.attempt]
                done_at[ln.attempt] = min(marked) if marked else 0.0
        if len(done_at) > 1:
            earlier = [
                n
                for n, t in done_at.items()
                if n != job.attempt and explained(job_id, n, t) is None
            ]
            (done_multi if earlier else done_explained).append((job_id, sorted(done_at)))
        for ln in lines:
            if ln.stream == LogStream.SYSTEM and ln.attempt == job.attempt:
                if ln.text.startswith("in the warm runtime"):
                    starts["warm"] += 1
                elif ln.text.startswith("in a fresh interpreter"):
                    starts["cold: " + ln.text.partition(": ")[2][:80]] += 1
        if job.state == JobState.SUCCEEDED:
            n = int(job.parameters.get("lines", "0"))
            want = [f"start attempt={job.attempt}"] + [f"line {i}" for i in range(n)] + ["done"]
            got = [ln.text for ln in out if ln.attempt == job.attempt]
            offsets = [ln.offset for ln in lines]
            if got != want or offsets != list(range(len(lines))):
                incomplete.append((job_id, got))

    ran_multi: list[tuple[str, list[tuple[int, float]]]] = []
    ran_explained: list[str] = []
    for job_id, ends in result["completions"].items():
        if len(ends) > 1 and job_id in jobs:
            final = jobs[job_id].attempt
            bad = [(n, t) for n, t in ends if n != final and explained(job_id, n, t) is None]
            if len({n for n, _ in ends}) < len(ends):
                bad.append((-1, 0.0))  # one attempt ran to its end twice
            if bad:
                ran_multi.append((job_id, sorted(ends)))
                continue
            ran_explained += [
                f"job {job_id}: {explained(job_id, n, t)}; ran again"
                for n, t in sorted(ends)
                if n != final
            ]

    # Requeues: every attempt but a job's last was lost; each should follow a kill of its
    # agent, and the latency is that kill to the next attempt's start.
    latencies: list[float] = []
    # The same, in steps: kill -> the lost attempt given up (requeued), -> the next attempt
    # assigned, -> it RUNNING; and the slowest requeue, described.
    steps: list[tuple[float, float, float]] = []
    slowest: tuple[float, str] = (0.0, "")
    unexplained_requeues: list[tuple[str, int, str, str, str]] = []
    cp_requeues: list[str] = []
    requeued_jobs = sum(1 for j in jobs.values() if j.attempt > 1)
    for job_id, attempts in by_job.items():
        for n, a in sorted(attempts.items()):
            nxt = attempts.get(n + 1)
            if nxt is None:
                continue
            # (A second before the assignment too: a replica may assign to an agent that has
            # just died before it sees the agent's stream close.)
            kill = killed_between(fleet, a.agent, a.create - 1.0, nxt.create)
            if kill is None:
                home = f"replica-{fleet.home[a.agent]}"
                cp = [c for c in fleet.cp_kills if c.what == home and a.create - 1 <= c.at]
                if cp and a.start is None and "came back without this attempt" in a.message:
                    # Assigned just before its agent's control plane died, never started:
                    # the assignment died with the replica, and the agent, back, lacks it.
                    cp_requeues.append(job_id)
                else:
                    unexplained_requeues.append((job_id, n, a.agent, a.state, a.message))
                continue
            began = nxt.start if nxt.start is not None else nxt.create
            latencies.append(began - kill.at)
            given_up = a.end if a.end is not None else nxt.create
            steps.append((given_up - kill.at, nxt.create - given_up, began - nxt.create))
            if began - kill.at > slowest[0]:
                slowest = (
                    began - kill.at,
                    f"job {job_id}: attempt {n} on {a.agent}, its agent killed; given up "
                    f"{given_up - kill.at:+.2f} s ({a.message!r}); attempt {n + 1} assigned to "
                    f"{nxt.agent} {nxt.create - kill.at:+.2f} s, RUNNING {began - kill.at:+.2f} s",
                )
    lost_attempts = sum(max(0, j.attempt - 1) for j in jobs.values())

    def spread(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{statistics.median(values):.2f} s / {max(values):.2f} s"

    rows: list[tuple[str, str, bool]] = [
        ("jobs submitted", str(len(submitted)), not lost and not extra),
        ("SUCCEEDED", str(states.get(JobState.SUCCEEDED, 0)), True),
        (
            "other final states (must be 0)",
            str(len(other_final))
            + (
                " (" + ", ".join(f"{s.name}: {n}" for s, n in states.items() if s.is_final) + ")"
                if other_final
                else ""
            ),
            not other_final,
        ),
        ("not final at the end (must be 0)", str(len(not_final)), not not_final),
        ("jobs lost or unknown (must be 0)", str(len(lost) + len(extra)), not lost and not extra),
        ("jobs succeeded twice (must be 0)", str(len(twice)), not twice),
        (
            "'done' in more than one attempt (must be 0)",
            f"{len(done_multi)} (+{len(done_explained)} after a kill between end and report)",
            not done_multi,
        ),
        (
            "ran to the end more than once (must be 0)",
            f"{len(ran_multi)} (+{len({e.split()[1] for e in ran_explained})} after a kill "
            "between end and report)",
            not ran_multi,
        ),
        ("final attempt's log incomplete (must be 0)", str(len(incomplete)), not incomplete),
        (
            "requeues without an agent kill (must be 0)",
            f"{len(unexplained_requeues)} (+{len(cp_requeues)} assigned as their control plane "
            "was killed, never started)",
            not unexplained_requeues,
        ),
        (
            "processes left once all jobs ended / once the agents stopped (must be 0)",
            f"{len(result['strays'])} / {len(result['after'])}",
            not result["strays"] and not result["after"],
        ),
        (
            "agent SIGKILLs / control-plane SIGKILLs",
            f"{len(fleet.kills)} / {len(fleet.cp_kills)}",
            True,
        ),
        ("jobs requeued (attempt > 1) / attempts lost", f"{requeued_jobs} / {lost_attempts}", True),
        (
            "agent kill -> requeued attempt RUNNING, median / max",
            f"{spread(latencies)} (n={len(latencies)})",
            True,
        ),
        ("... kill -> attempt given up, median / max", spread([x[0] for x in steps]), True),
        ("... given up -> next attempt assigned", spread([x[1] for x in steps]), True),
        ("... assigned -> RUNNING", spread([x[2] for x in steps]), True),
        (
            "final attempts started warm / cold",
            f"{starts['warm']} / {sum(n for k, n in starts.items() if k != 'warm')}",
            True,
        ),
        ("throughput", f"{len(jobs) / result['elapsed']:.2f} jobs/s", True),
        (
            "wall time (first submit -> all final) / total",
            f"{result['elapsed']:.1f} s / {wall:.1f} s",
            True,
        ),
    ]

    print()
    print("| check | value | |")
    print("|---|---|---|")
    for name, value, ok in rows:
        print(f"| {name} | {value} | {'ok' if ok else 'FAIL'} |")
    failed = [name for name, _, ok in rows if not ok]

    def show(title: str, items: list[Any]) -> None:
        if items:
            print(f"\n{title} ({len(items)}; up to 10):")
            for item in items[:10]:
                print(f"  {item}")

    show("lost submits", lost)
    show("unknown jobs", extra)
    show(
        "not final",
        [(j.id, j.state.name, j.attempt, j.agent, j.state_reason) for j in not_final],
    )
    show(
        "other final states", [(j.id, j.state.name, j.attempt, j.state_reason) for j in other_final]
    )
    show("succeeded twice (job, succeeded attempts, current)", twice)
    show("'done' in several attempts", done_multi)
    show("ran to the end more than once (job, [(attempt, time)])", ran_multi)
    show("(ok) ran again after a kill between its end and its report", ran_explained)
    show("incomplete final logs", incomplete)
    show("requeues without a kill (job, attempt, agent, state, message)", unexplained_requeues)
    cold = sorted(((n, k) for k, n in starts.items() if k != "warm"), reverse=True)
    show("cold starts (count, reason)", cold)
    if slowest[1]:
        print(f"\nslowest requeue: {slowest[1]}")
    show("processes left once all jobs ended", result["strays"])
    show("processes left once the agents stopped (SIGTERM, then SIGKILL)", result["after"])
    if failed:
        print(f"\nFAILED: {', '.join(failed)}; logs in {fleet.tmp}")
    return not failed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--slots", type=int, default=2, help="jobs at once per agent")
    p.add_argument("--replicas", type=int, choices=[1, 2], default=1)
    p.add_argument(
        "--database-url", help="shared database (default: a throwaway PostgreSQL for this run)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lease-duration", type=float, default=5.0)
    p.add_argument("--max-attempts", type=int, default=10, help="per job (agent losses)")
    p.add_argument("--kill-every", type=float, default=4.0, help="mean seconds between kills")
    p.add_argument(
        "--restart-after",
        type=float,
        default=4.0,
        help="a killed agent's mean downtime (seconds; each is 0.5-1.5 times this)",
    )
    p.add_argument("--cp-kill-at", type=float, default=0.4, help="fraction of jobs run first")
    p.add_argument("--cp-down", type=float, default=3.0, help="the control plane's downtime")
    p.add_argument("--submit-rate", type=float, default=0, help="jobs/s (0: as fast as it can)")
    p.add_argument("--timeout", type=float, default=600, help="seconds for all jobs to end")
    p.add_argument(
        "--agent-args",
        default="",
        metavar="ARGS",
        help="more options for every agent, e.g. --agent-args=--no-warm-runtime",
    )
    p.add_argument("--keep", action="store_true", help="keep the logs and data directories")
    args = p.parse_args()
    if args.agents < 2:
        p.error("--agents must be at least 2 (one stays up while another is killed)")
    rng = random.Random(args.seed)
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="brinell-soak-"))
    (tmp / "marks").mkdir()
    ok = False
    with database(args.database_url) as url:
        fleet = Fleet(
            tmp,
            url,
            args.lease_duration,
            args.replicas,
            args.agents,
            args.slots,
            shlex.split(args.agent_args),
        )
        try:
            fleet.up()
            result = soak(fleet, args, rng)
        finally:
            fleet.down()
        # Whatever the agents started must go with them (none of it is in their groups).
        result["after"] = strays(tmp / "marks", set())
        for line in result["after"]:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(line.split()[1]), signal.SIGKILL)  # our own leftovers only
        ok = check(fleet, result, time.monotonic() - began)
    if ok and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"logs and data: {tmp}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
