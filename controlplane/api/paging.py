"""List responses that every client can receive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message

from brinell.limits import MAX_RESPONSE_BYTES

T = TypeVar("T")
M = TypeVar("M", bound=Message)


async def fitted(
    fetch: Callable[[int], Awaitable[tuple[list[T], str]]],
    size: int,
    build: Callable[[list[T], str], M],
) -> M:
    """The response for a page of at most ``size`` items (``fetch(n)`` gives n items and the
    token after them) that is at most MAX_RESPONSE_BYTES: a page of large items is fetched
    again with half as many, and its next_page_token continues after the last one it holds.
    Every item is bounded well below the limit, so a page of one always fits."""
    items, token = await fetch(size)
    response = build(items, token)
    while response.ByteSize() > MAX_RESPONSE_BYTES and len(items) > 1:
        items, token = await fetch(len(items) // 2)
        response = build(items, token)
    return response
