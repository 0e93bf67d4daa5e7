"""How the agent keeps its channel to the control plane: keepalive and reconnect backoff."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import AgentConfig


def channel_options(config: AgentConfig) -> list[tuple[str, int]]:
    """Keepalive that a server allowing pings every 10 s accepts, and channel reconnects
    no slower than the agent's own backoff."""
    return [
        ("grpc.keepalive_time_ms", 20000),
        ("grpc.keepalive_timeout_ms", 10000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", max(100, int(config.reconnect_min * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1000, int(config.reconnect_max * 1000))),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]


class Backoff:
    """Exponential backoff with full jitter, never below ``low`` nor above ``high``."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high
        self.failures = 0

    def next(self) -> float:
        cap = min(self.high, self.low * (2 ** min(self.failures, 30)))
        self.failures += 1
        return random.uniform(self.low, max(self.low, cap))

    def reset(self) -> None:
        self.failures = 0
