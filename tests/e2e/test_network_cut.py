"""The network between an agent and the control plane drops (README, "What happens when
something dies"): real control plane, real agent, and between them a TCP proxy that can
partition them.

A cut shorter than the lease requeues nothing: the agent keeps running its attempt, buffers
its lines and updates and replays them, and the log is complete (gap-free, each line once).
A cut longer than the lease requeues the job, which then succeeds exactly once; nothing the
partitioned agent's stale attempt printed or reported counts as the job's.

Each case is healed two ways: the connections that lived through the cut are dropped (the
agent reconnects, re-registers and replays), or they carry on (TCP delivers late what
waited). The agent's own keepalive (a ping after 20 s, 10 s to answer: agent/channel.py)
would drop a blackholed connection by itself after about 30 s; the tests drop it at the heal
instead, so no cut lasts longer than a few seconds.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from brinell import Client, Job, JobState, LogLine, LogStream
from tests.conftest import Proc, start_server, wait_until
from tests.e2e.conftest import start_agent, wait_connected
from tests.e2e.test_jobs import alive as _alive
from tests.e2e.test_jobs import pids

AGENT = "cut-agent"
SPARE = "spare"
# These jobs need no pre-imported runtime: they start cold at once.
COLD = ["--no-warm-runtime"]


def alive(pid: int) -> bool:
    try:
        return _alive(pid)
    except OSError:  # it went between the two looks of test_jobs.alive
        return False


GATED = """\
name: gated
entry_points:
  main:
    parameters:
      dir: {type: string}
      n: {type: int, default: 2500}
    command: "python gated.py {dir} {n}"
"""
# Prints two lines, waits for ``DIR/go`` (the test decides when the rest is printed: during
# a cut), prints N ticks, leaves ``DIR/attempt-A.ticked``, waits for ``DIR/end-A`` (the test
# decides whether attempt A ends during the cut, after it, or is cancelled), prints its last
# line and leaves ``DIR/attempt-A.ended``. Every line but the first names the attempt that
# printed it, so a line stored under another attempt shows.
GATED_PY = """\
import os, sys, time
from pathlib import Path

here, n = Path(sys.argv[1]), int(sys.argv[2])
attempt = os.environ["BRINELL_ATTEMPT"]


def wait_for(name):
    deadline = time.monotonic() + 120
    while not (here / name).exists():
        if time.monotonic() > deadline:
            sys.exit(f"no {name} within 120 s")
        time.sleep(0.05)


print(f"pid={os.getpid()}", flush=True)
print(f"attempt {attempt} waits", flush=True)
wait_for("go")
for i in range(n):
    print(f"tick {i} of attempt {attempt}", flush=True)
(here / f"attempt-{attempt}.ticked").write_text("")
wait_for(f"end-{attempt}")
print(f"done by attempt {attempt}", flush=True)
(here / f"attempt-{attempt}.ended").write_text("")
"""


class _Link:
    """One proxied connection: the agent's socket and, once the network lets it through,
    the one to the control plane."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = False
        self._lock = threading.Lock()
        self._users = 1

    def close(self) -> None:
        """Ends both sides (shutdown wakes the pumps; the last user closes the sockets)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            socks = [s for s in (self.client, self.upstream) if s is not None]
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def attach(self, upstream: socket.socket) -> bool:
        with self._lock:
            if self.closed:
                return False
            self.upstream = upstream
            self._users = 2  # one pump each way
            return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users <= 0
        if last:
            for s in (self.client, self.upstream):
                if s is not None:
                    s.close()


class Partition:
    """A TCP proxy standing for the network between the agent and the control plane.

    ``cut()``: nothing crosses any more, either way, and nothing is closed (a partition sends
    no RST or FIN): what the peers send stays unread in the kernel's buffers, as TCP would
    keep retransmitting it, and a connection made during the cut is accepted (the kernel
    does that) but never reaches the control plane. ``heal(drop=False)``: the network is
    back and TCP delivers what waited, on the same connections. ``heal(drop=True)``: the
    connections that lived through the cut are closed first, as when TCP or a keepalive
    gave up on them, so the agent has to reconnect, re-register and replay.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self._open = threading.Event()
        self._open.set()
        self._stopped = False
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._open.clear()

    def heal(self, drop: bool) -> None:
        if drop:
            with self._lock:
                held, self._links = self._links, []
            for link in held:
                link.close()
        self._open.set()

    def stop(self) -> None:
        self._stopped = True
        self.heal(drop=True)
        self.listener.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.setblocking(True)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            link = _Link(client)
            with self._lock:
                self._links = [ln for ln in self._links if not ln.closed] + [link]
            threading.Thread(target=self._connect, args=(link,), daemon=True).start()

    def _connect(self, link: _Link) -> None:
        # During a cut a new connection goes nowhere until the network is back.
        while not self._open.wait(0.1):
            if link.closed:
                break
        try:
            if link.closed:
                raise OSError("dropped before it got through")
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            link.close()
            link.release()
            return
        if not link.attach(upstream):
            upstream.close()
            link.release()
            return
        for src, dst in ((link.client, upstream), (upstream, link.client)):
            threading.Thread(target=self._pump, args=(link, src, dst), daemon=True).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not link.closed:
                if not self._open.wait(0.1):
                    continue  # cut: read nothing, the bytes wait in the kernel
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready:
                    continue
                data = src.recv(1 << 16)
                if not data:
                    break
                while not self._open.wait(0.1):  # cut between read and write: hold it
                    if link.closed:
                        return
                if link.closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            link.close()
            link.release()


@dataclass
class Net:
    client: Client
    target: str  # the control plane itself (clients and the spare agent use it)
    proxy: Partition
    agent: Proc
    entry_point: str
    tmp: Path
    prefect: str = "none"  # the jobs here use no Prefect: no server to wait for

    def submit(self, name: str, n: int = 2500) -> tuple[Job, Path]:
        gate = self.tmp / name
        gate.mkdir()
        return self.client.jobs.submit("cut", self.entry_point, {"dir": str(gate), "n": n}), gate


@contextlib.contextmanager
def partitioned(tmp: Path, lease: float) -> Iterator[Net]:
    """A control plane (lease ``lease`` s, heartbeats every 0.5 s) and one agent that
    reaches it only through a Partition."""
    server, target = start_server(
        tmp / "server", 0, "--lease-duration", f"{lease:g}", "--mlflow-tracking-uri", "none"
    )
    proxy = Partition(target)
    agent = start_agent(proxy.target, tmp / "agent", "none", AGENT, 1, *COLD)
    client = Client(target, timeout=30)
    try:
        wait_connected(client, AGENT)
        project = tmp / "gated"
        project.mkdir()
        (project / "MLproject").write_text(GATED)
        (project / "gated.py").write_text(GATED_PY)
        client.experiments.create("cut")
        ep, _ = client.entry_points.push(project)
        yield Net(client, target, proxy, agent, ep.id, tmp)
    finally:
        proxy.heal(drop=False)  # so the agent's shutdown is not spent on a dead network
        client.close()
        agent.stop()
        proxy.stop()
        server.stop()


def _connected(c: Client) -> set[str]:
    return {a.id for a in c.agents.list(filter="state=CONNECTED")}


def _say(gate: Path, *names: str) -> None:
    for name in names:
        (gate / name).write_text("")


def _stdout(lines: list[LogLine]) -> list[str]:
    return [ln.text for ln in lines if ln.stream == LogStream.STDOUT]


def _wait_logged(c: Client, job: Job, text: str, timeout: float = 60) -> None:
    wait_until(lambda: any(ln.text == text for ln in c.jobs.logs(job)), timeout, 0.1)


def _printed(gate: Path, marker: str, pid: int | None = None, timeout: float = 60) -> None:
    """The attempt has left ``marker`` (and, with ``pid``, its process is gone)."""
    wait_until(lambda: (gate / marker).exists() and (pid is None or not alive(pid)), timeout)


def _hold(since: float, seconds: float) -> None:
    """Keeps the network cut for at least ``seconds`` (several heartbeats go missing)."""
    time.sleep(max(0.0, since + seconds - time.monotonic()))


def _assert_complete(lines: list[LogLine], attempt: int, n: int, pid: int) -> None:
    """The whole log is gap-free and the attempt's lines are all there, each once, in order."""
    assert [ln.offset for ln in lines] == list(range(len(lines)))
    mine = [ln for ln in lines if ln.attempt == attempt]
    seqs = [ln.sequence for ln in mine]
    assert seqs == sorted(set(seqs)), "a line stored twice or out of order"
    expected = [f"pid={pid}", f"attempt {attempt} waits"]
    expected += [f"tick {i} of attempt {attempt}" for i in range(n)]
    expected.append(f"done by attempt {attempt}")
    assert _stdout(mine) == expected


def _assert_only_attempt_2_counts(lines: list[LogLine], n: int) -> None:
    """Attempt 2 logged everything; of the stale attempt 1 only what it printed before the
    cut is stored; every line is stored under the attempt that printed it."""
    for ln in lines:
        printed_by = re.search(r"attempt (\d+)", ln.text)
        if printed_by and ln.stream == LogStream.STDOUT:
            assert int(printed_by.group(1)) == ln.attempt, ln
    stale = _stdout([ln for ln in lines if ln.attempt == 1])
    assert len(stale) == 2 and stale[1] == "attempt 1 waits", stale[:5]
    assert [ln.attempt for ln in lines if ln.text.startswith("done by")] == [2]
    second = _stdout([ln for ln in lines if ln.attempt == 2])
    assert second and second[0].startswith("pid="), second[:3]
    _assert_complete(lines, 2, n, int(second[0].removeprefix("pid=")))


HEALS = [pytest.param(True, id="reconnect"), pytest.param(False, id="same-connection")]
#: What the attempt does while the network is cut: goes on printing (ends after the heal),
#: or prints everything and ends (its final update, too, waits for the network).
SHORT_CUTS = [
    pytest.param(True, False, id="reconnect-ends-after"),
    # Found by this test: heartbeats ticking on a dead stream "confirmed" the final update,
    # the re-registration left the attempt out and it was requeued as lost (now acked).
    pytest.param(True, True, id="reconnect-ends-during"),
    pytest.param(False, False, id="same-connection-ends-after"),
    pytest.param(False, True, id="same-connection-ends-during"),
]


@pytest.mark.parametrize(("drop", "ends_during_cut"), SHORT_CUTS)
def test_a_cut_shorter_than_the_lease_requeues_nothing_and_loses_no_line(
    tmp_path: Path, drop: bool, ends_during_cut: bool
) -> None:
    """The attempt prints 2,500 lines (and, in some cases, ends) while the network is cut
    for about 3 s, well inside the 10 s lease; once the network is back the job succeeds on
    its first attempt with every line once, whether the agent had to reconnect and replay or
    its connection survived.

    reconnect-ends-during failed before updates were acknowledged: while the stream was
    blackholed, the agent's heartbeat loop counted heartbeats it had only queued and dropped
    the pending SUCCEEDED update as delivered; the re-registration then left attempt 1 out,
    and the control plane requeued it ("came back without this attempt") and ran the job
    again.
    """
    with partitioned(tmp_path, lease=10) as net:
        c = net.client
        n = 2500
        job, gate = net.submit("short", n)
        pid = pids(c, job)["pid"]
        _wait_logged(c, job, "attempt 1 waits")
        net.proxy.cut()
        cut_at = time.monotonic()
        before = list(c.jobs.logs(job))
        # end-2: should the job be requeued after all, its attempt 2 ends at once.
        if ends_during_cut:
            _say(gate, "go", "end-1", "end-2")
            _printed(gate, "attempt-1.ended", pid)
        else:
            _say(gate, "go", "end-2")
            _printed(gate, "attempt-1.ticked")
        _hold(cut_at, 3.0)
        during = c.jobs.get(job)
        assert (during.state, during.attempt) == (JobState.RUNNING, 1), during.state_reason
        assert list(c.jobs.logs(job)) == before, "lines crossed a cut network"
        assert not any("tick" in ln.text for ln in before)
        assert ends_during_cut or alive(pid)
        accepted = net.proxy.accepted
        net.proxy.heal(drop=drop)
        if not ends_during_cut:
            _say(gate, "end-1")

        final = c.jobs.wait(job, timeout=60)
        assert final.state == JobState.SUCCEEDED, final.state_reason
        assert (final.attempt, final.agent, final.exit_code) == (1, f"agents/{AGENT}", 0)
        assert "requeued" not in final.state_reason, final.state_reason
        if drop:  # the replay really was one: the agent came back on a new connection
            wait_until(lambda: net.proxy.accepted > accepted, 30)
        # The final update may land before the replayed tail of the log: wait for the end.
        _wait_logged(c, job, "done by attempt 1")
        lines = list(c.jobs.logs(job))
        assert {ln.attempt for ln in lines} == {1}
        _assert_complete(lines, 1, n, pid)
        wait_connected(c, AGENT, timeout=30)
        assert net.agent.proc.poll() is None, "the agent died"


#: Whether the stale attempt 1 ends by itself during the cut, or still runs when the
#: network is back (and must then be cancelled by its agent).
STALE = [pytest.param(True, id="stale-ends-during"), pytest.param(False, id="stale-cancelled")]


def _stale_attempt_runs_on(gate: Path, pid: int, stale_ends: bool) -> None:
    """Attempt 1, cut off, prints everything; with ``stale_ends`` it ends too (succeeds)."""
    if stale_ends:
        _printed(gate, "attempt-1.ended", pid)
        _hold(time.monotonic(), 1.0)  # its agent has seen it end while the network is cut
    else:
        _printed(gate, "attempt-1.ticked")
        assert alive(pid)


@pytest.mark.parametrize("stale_ends", STALE)
@pytest.mark.parametrize("drop", HEALS)
def test_a_cut_longer_than_the_lease_moves_the_job_to_another_agent(
    tmp_path: Path, drop: bool, stale_ends: bool
) -> None:
    """Lease 3 s: the partitioned agent's attempt is requeued to a spare agent and succeeds
    there, while attempt 1 runs on unseen. Once the network is back (the agent reconnects
    and replays, or its old connection carries it all late) the job has still succeeded
    once, by attempt 2 on the spare, nothing of attempt 1 counts, an attempt 1 still running
    is stopped, and the agent takes new work again."""
    with partitioned(tmp_path, lease=3) as net:
        c = net.client
        n = 300
        job, gate = net.submit("long", n)
        pid = pids(c, job)["pid"]
        _wait_logged(c, job, "attempt 1 waits")
        assert c.jobs.get(job).agent == f"agents/{AGENT}"
        spare = start_agent(net.target, tmp_path / "spare", net.prefect, SPARE, 1, *COLD)
        try:
            wait_connected(c, SPARE)
            net.proxy.cut()
            moved = wait_until(lambda: (j := c.jobs.get(job)).attempt >= 2 and j, 60, 0.2)
            assert moved.agent == f"agents/{SPARE}", moved
            assert alive(pid), "the partitioned agent's attempt should run on"
            _say(gate, "go", "end-2", *(["end-1"] if stale_ends else []))
            final = c.jobs.wait(job, timeout=60)
            assert final.state == JobState.SUCCEEDED, final.state_reason
            assert (final.attempt, final.agent) == (2, f"agents/{SPARE}")
            _stale_attempt_runs_on(gate, pid, stale_ends)
            net.proxy.heal(drop=drop)
            wait_until(lambda: not alive(pid), 60)  # told to cancel what still ran
            # New work for the agent that was away (the spare leaves): it gets it only once
            # it has heartbeaten, and everything its stream carried before (what attempt 1
            # printed and reported) has been dealt with by the time this job ends.
            spare.stop()
            wait_until(lambda: SPARE not in _connected(c), 30)
            after, after_gate = net.submit("after", 3)
            _say(after_gate, "go", "end-1")
            done = c.jobs.wait(after, timeout=60)
            assert done.state == JobState.SUCCEEDED, done.state_reason
            assert done.agent == f"agents/{AGENT}"
        finally:
            spare.stop()
        again = c.jobs.get(job)
        assert (again.state, again.attempt, again.agent) == (
            JobState.SUCCEEDED,
            2,
            f"agents/{SPARE}",
        )
        assert stale_ends or not (gate / "attempt-1.ended").exists()
        _assert_only_attempt_2_counts(list(c.jobs.logs(job)), n)


@pytest.mark.parametrize("stale_ends", STALE)
def test_a_cut_longer_than_the_lease_reruns_the_job_on_the_same_agent(
    tmp_path: Path, stale_ends: bool
) -> None:
    """No other agent: the job waits in the queue until the partitioned agent is back (on a
    new connection) and heartbeats, then runs again there as attempt 2; attempt 1, which
    went on printing during the cut (and ended, or is stopped once the network is back),
    counts for nothing, though the agent replays all of it."""
    with partitioned(tmp_path, lease=3) as net:
        c = net.client
        n = 300
        job, gate = net.submit("same", n)
        pid = pids(c, job)["pid"]
        _wait_logged(c, job, "attempt 1 waits")
        net.proxy.cut()
        queued = wait_until(lambda: (j := c.jobs.get(job)).state == JobState.QUEUED and j, 60)
        assert queued.attempt == 1 and "lost" in queued.state_reason, queued
        _say(gate, "go", "end-2", *(["end-1"] if stale_ends else []))
        _stale_attempt_runs_on(gate, pid, stale_ends)
        assert c.jobs.get(job).state == JobState.QUEUED  # the agent is away: no work for it
        accepted = net.proxy.accepted
        net.proxy.heal(drop=True)
        final = c.jobs.wait(job, timeout=60)
        assert final.state == JobState.SUCCEEDED, final.state_reason
        assert (final.attempt, final.agent) == (2, f"agents/{AGENT}")
        assert net.proxy.accepted > accepted
        wait_until(lambda: not alive(pid), 60)  # told to cancel what still ran
        assert stale_ends or not (gate / "attempt-1.ended").exists()
        # Attempt 2's end came on the stream after the replay of attempt 1: all dealt with.
        _wait_logged(c, job, "done by attempt 2")
        _assert_only_attempt_2_counts(list(c.jobs.logs(job)), n)


def test_a_lost_attempts_late_lines_do_not_land_while_its_job_waits_in_the_queue(
    tmp_path: Path,
) -> None:
    """The old connection survives a cut longer than the lease (lease 3 s) and then carries
    what attempt 1 printed during the cut; the job, requeued, is still waiting (a job of
    higher priority takes the agent's one slot first). Those lines belong to a lost
    attempt: like its update, they must not count as the job's."""
    with partitioned(tmp_path, lease=3) as net:
        c = net.client
        n = 300
        job, gate = net.submit("lost", n)
        pid = pids(c, job)["pid"]
        _wait_logged(c, job, "attempt 1 waits")
        net.proxy.cut()
        wait_until(lambda: c.jobs.get(job).state == JobState.QUEUED, 60)
        first_gate = tmp_path / "first"
        first_gate.mkdir()
        first = c.jobs.submit("cut", net.entry_point, {"dir": str(first_gate), "n": 1}, priority=10)
        _say(gate, "go", "end-1")
        _stale_attempt_runs_on(gate, pid, stale_ends=True)
        net.proxy.heal(drop=False)
        # The agent's new work starts after everything it sent before on that stream.
        _wait_logged(c, first, "attempt 1 waits")
        assert c.jobs.get(job).state == JobState.QUEUED
        stale = _stdout([ln for ln in c.jobs.logs(job) if ln.attempt == 1])
        _say(first_gate, "go", "end-1")
        _say(gate, "end-2")
        assert c.jobs.wait(first, timeout=60).state == JobState.SUCCEEDED
        final = c.jobs.wait(job, timeout=60)
        assert final.state == JobState.SUCCEEDED and final.attempt == 2, final.state_reason
        assert len(stale) == 2, f"{len(stale)} lines of the lost attempt 1 stored"
        _wait_logged(c, job, "done by attempt 2")
        _assert_only_attempt_2_counts(list(c.jobs.logs(job)), n)
