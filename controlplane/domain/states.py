"""The job state machine: every state change goes through ``transition``."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def is_active(self) -> bool:
        """Held by an agent."""
        return self in (JobState.ASSIGNED, JobState.RUNNING)


FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)

# Requeue (ASSIGNED/RUNNING -> QUEUED) happens when an agent is lost or stops the attempt
# before it ended, or when the job failed in a way its retry policy retries; PENDING waits on
# dependencies (chains.py): a job is submitted into it and leaves it queued, failed or
# cancelled.
_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.QUEUED, JobState.CANCELLED, JobState.FAILED}),
    JobState.QUEUED: frozenset({JobState.ASSIGNED, JobState.CANCELLED, JobState.FAILED}),
    JobState.ASSIGNED: frozenset({JobState.RUNNING, JobState.QUEUED, *FINAL_STATES}),
    JobState.RUNNING: frozenset({JobState.QUEUED, *FINAL_STATES}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMED_OUT: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, src: JobState, dst: JobState) -> None:
        super().__init__(f"a job cannot go from {src} to {dst}")
        self.src, self.dst = src, dst


def can_transition(src: JobState, dst: JobState) -> bool:
    return dst in _ALLOWED[src]


def transition(src: JobState, dst: JobState) -> JobState:
    """Returns ``dst`` when the state machine allows ``src -> dst``; raises otherwise."""
    if not can_transition(src, dst):
        raise IllegalTransition(src, dst)
    return dst


def predecessors(dst: JobState) -> frozenset[JobState]:
    """States from which ``dst`` may be entered: the WHERE clause of a compare-and-set."""
    return frozenset(s for s, targets in _ALLOWED.items() if dst in targets)
