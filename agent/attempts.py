"""What the agent keeps per attempt until the control plane has it: unacknowledged log lines
(the replay buffer) and pending updates, with their place in the stream's order."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from brinell.v1 import agent_service_pb2, job_pb2

from .executor import CancelSignal, Recovered, Stream

# Lines kept per attempt until acknowledged; the oldest go beyond it. Lines evicted before
# they were sent, or sent on a stream that broke before acknowledging them, are lost: the
# control plane sees a gap in the sequence numbers, and a SYSTEM line says how many.
MAX_BUFFERED_LINES = 100_000

_STREAMS = {
    Stream.STDOUT: job_pb2.LOG_STREAM_STDOUT,
    Stream.STDERR: job_pb2.LOG_STREAM_STDERR,
    Stream.SYSTEM: job_pb2.LOG_STREAM_SYSTEM,
}


AttemptKey = tuple[str, int]


@dataclass
class PendingUpdate:
    message: agent_service_pb2.AttemptUpdate
    # The last log sequence number written before the update: replay keeps that order.
    after_seq: int
    # Connection generation when it was put on a stream (kept until acknowledged).
    sent_gen: int | None = None


@dataclass
class AttemptState:
    job: str  # `jobs/{id}`
    attempt: int
    grace_period: float
    cancel: CancelSignal = field(default_factory=CancelSignal)
    task: asyncio.Task[None] | None = None
    lines: deque[job_pb2.LogLine] = field(default_factory=deque)  # unacknowledged
    next_seq: int = 1
    sent_upto: int = 0  # highest sequence put on the current stream
    acked: int = 0
    # Lines evicted before they were sent: lost (reported in a SYSTEM line).
    dropped: int = 0
    # The newest line evicted after it was sent but before it was acknowledged: lost only if
    # that stream breaks before the acknowledgement (counted then).
    evicted_upto: int = 0
    updates: list[PendingUpdate] = field(default_factory=list)
    finished: bool = False
    delivered_at: float | None = None
    # False for the record made to answer a Cancel for an attempt this agent never had.
    assigned: bool = True
    # Found at agent start (a container left by the previous run), until re-attached.
    recovered: Recovered | None = None

    @property
    def key(self) -> AttemptKey:
        return (self.job, self.attempt)

    @property
    def job_id(self) -> str:
        return self.job.removeprefix("jobs/")

    def running_message(self) -> agent_service_pb2.RunningAttempt:
        return agent_service_pb2.RunningAttempt(job=self.job, attempt=self.attempt)

    def add_line(self, stream: Stream, text: str) -> None:
        ns = time.time_ns()
        line = job_pb2.LogLine(
            attempt=self.attempt, sequence=self.next_seq, stream=_STREAMS[stream], text=text
        )
        line.time.seconds = ns // 1_000_000_000
        line.time.nanos = ns % 1_000_000_000
        self.next_seq += 1
        self.lines.append(line)
        if len(self.lines) > MAX_BUFFERED_LINES:
            evicted = self.lines.popleft()
            if evicted.sequence > self.sent_upto:
                self.dropped += 1
            else:
                self.evicted_upto = evicted.sequence

    def replay_from_acked(self) -> None:
        """A new stream: what the old one carried but nobody acknowledged goes again; what of
        it the buffer no longer holds is lost."""
        if self.evicted_upto > self.acked:
            self.dropped += self.evicted_upto - self.acked
            self.acked = self.evicted_upto
        self.evicted_upto = 0
        self.sent_upto = self.acked
