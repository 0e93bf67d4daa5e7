"""The agent's line splitting depends only on the bytes, not on how they arrive: the docker
executor counts lines of a container's log to resume it where the stored part ends."""

from __future__ import annotations

import random

from brinell.agent.executor import MAX_LINE_BYTES, LineSplitter

M = MAX_LINE_BYTES


def _split(data: bytes, rng: random.Random) -> list[str]:
    splitter, out, i = LineSplitter(), [], 0
    while i < len(data):
        n = rng.randint(1, 3 * M)
        out += splitter.feed(data[i : i + n])
        i += n
    return out + splitter.end()


def test_any_chunking_gives_the_same_lines() -> None:
    rng = random.Random(1)
    for _ in range(200):
        data = b"".join(
            b"x" * rng.choice([0, 1, M - 1, M, M + 1, 2 * M, 2 * M + 1, 5])
            + rng.choice([b"\n", b"\r\n", b""])
            for _ in range(rng.randint(0, 6))
        )
        first = _split(data, rng)
        assert all(len(line) <= M for line in first)
        for _ in range(3):
            assert _split(data, rng) == first


def test_long_lines_are_cut_and_a_last_partial_line_kept() -> None:
    splitter = LineSplitter()
    out = splitter.feed(b"a" * M + b"\n" + b"b" * (M + 3) + b"\r\nc")
    assert out == ["a" * M, "b" * M, "bbb"]
    assert splitter.end() == ["c"]
    assert splitter.end() == []
