"""Page tokens are signed and bound to their query."""

from __future__ import annotations

import pytest

from brinell.controlplane.domain.errors import InvalidArgument
from brinell.controlplane.domain.paging import MAX_PAGE_SIZE, PageTokens, page_size


def test_round_trip_and_binding() -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.encode("jobs:state=RUNNING", 42)
    assert tokens.decode("jobs:state=RUNNING", token) == 42
    assert tokens.decode("jobs:state=RUNNING", "") is None
    with pytest.raises(InvalidArgument, match="different query"):
        tokens.decode("jobs:", token)
    with pytest.raises(InvalidArgument, match="tampered"):
        PageTokens(b"other" * 8).decode("jobs:state=RUNNING", token)
    for i in range(len(token)):
        flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        with pytest.raises(InvalidArgument):
            tokens.decode("jobs:state=RUNNING", flipped)


def test_page_size_bounds() -> None:
    assert page_size(0) == 50
    assert page_size(10**6) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        page_size(-1)
