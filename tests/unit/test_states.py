"""The job state machine."""

from __future__ import annotations

import itertools

import pytest

from brinell.controlplane.domain.states import (
    FINAL_STATES,
    IllegalTransition,
    JobState,
    can_transition,
    predecessors,
    transition,
)


def test_happy_path() -> None:
    state = JobState.QUEUED
    for nxt in (JobState.ASSIGNED, JobState.RUNNING, JobState.SUCCEEDED):
        state = transition(state, nxt)
    assert state.is_final


@pytest.mark.parametrize("final", sorted(FINAL_STATES))
def test_final_states_are_final(final: JobState) -> None:
    for target in JobState:
        assert not can_transition(final, target)
        with pytest.raises(IllegalTransition):
            transition(final, target)


def test_no_skipping_assignment_and_no_running_from_queue() -> None:
    assert not can_transition(JobState.QUEUED, JobState.RUNNING)
    assert not can_transition(JobState.QUEUED, JobState.SUCCEEDED)
    assert not can_transition(JobState.PENDING, JobState.ASSIGNED)
    assert not can_transition(JobState.RUNNING, JobState.ASSIGNED)


def test_requeue_only_from_agent_held_states() -> None:
    sources = {s for s in JobState if can_transition(s, JobState.QUEUED)}
    assert sources == {JobState.PENDING, JobState.ASSIGNED, JobState.RUNNING}


def test_cancel_possible_from_every_live_state() -> None:
    for s in JobState:
        assert can_transition(s, JobState.CANCELLED) == (not s.is_final)


def test_predecessors_match_the_table() -> None:
    for src, dst in itertools.product(JobState, JobState):
        assert (src in predecessors(dst)) == can_transition(src, dst)
    assert predecessors(JobState.ASSIGNED) == {JobState.QUEUED}


def test_active_states() -> None:
    assert {s for s in JobState if s.is_active} == {JobState.ASSIGNED, JobState.RUNNING}
