"""How long the client waits before a retry: exponential back-off with full jitter, and
the longer waits the server asks for when it closes a connection (PROTOCOL.md §8)."""

from __future__ import annotations

import random

from wedsync_client.wire import CLOSE_CONNECTION_LIMIT, CLOSE_OVERLOADED, CLOSE_POLICY

SLOW_RETRY_CLOSES = frozenset({CLOSE_POLICY, CLOSE_CONNECTION_LIMIT})  # come back later


def full_jitter(attempt: int, initial: float, maximum: float) -> float:
    """A delay drawn uniformly from [0, min(maximum, initial × 2^attempt)]."""
    cap = min(maximum, initial * 2**attempt)
    return random.uniform(0, cap)  # noqa: S311


def reconnect_delay(code: int | None, attempt: int, initial: float, maximum: float) -> float:
    """The wait before reconnect ``attempt`` after a close with ``code`` (None: the last
    attempt failed): half to all of ``maximum`` when the server asked us to come back
    later, full jitter otherwise, from the third step on when it is overloaded."""
    if code in SLOW_RETRY_CLOSES:
        return maximum * (0.5 + random.random() / 2)  # noqa: S311
    return full_jitter(max(attempt, 2) if code == CLOSE_OVERLOADED else attempt, initial, maximum)
