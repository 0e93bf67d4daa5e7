"""An attempt's line buffer: what counts as dropped (issue 11: a 200k-line job on a connected
stream got about 17 false "the agent dropped N log line(s)" lines, for lines already sent but
not yet acknowledged when the buffer evicted them)."""

from __future__ import annotations

from brinell.agent.attempts import MAX_BUFFERED_LINES, AttemptState
from brinell.agent.executor import Stream


def _filled(extra: int, sent: int) -> AttemptState:
    st = AttemptState(job="jobs/j", attempt=1, grace_period=1)
    for i in range(MAX_BUFFERED_LINES + extra):
        st.add_line(Stream.STDOUT, f"line {i}")
        if i < sent:
            st.sent_upto = i + 1  # what the daemon does when it puts the line on the stream
    return st


def test_lines_evicted_after_they_were_sent_are_not_reported_lost() -> None:
    st = _filled(extra=10, sent=MAX_BUFFERED_LINES + 10)
    assert st.dropped == 0
    assert st.evicted_upto == 10
    assert len(st.lines) == MAX_BUFFERED_LINES and st.lines[0].sequence == 11


def test_lines_evicted_before_they_were_sent_are() -> None:
    st = _filled(extra=10, sent=4)
    assert st.dropped == 6 and st.evicted_upto == 4


def test_a_broken_stream_makes_the_unacknowledged_evicted_lines_lost() -> None:
    st = _filled(extra=10, sent=MAX_BUFFERED_LINES + 10)
    st.acked = 3  # the stream broke after acknowledging lines 1-3 only
    st.replay_from_acked()
    assert st.dropped == 7  # lines 4-10: sent, never acknowledged, no longer held
    assert st.sent_upto == st.acked == 10 and st.evicted_upto == 0
    st.replay_from_acked()  # counted once
    assert st.dropped == 7
