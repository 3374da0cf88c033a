"""Sends and joins through the channel layer, each bounded, and event broadcasts in order.

Every call into the layer goes through the layer's breaker and a timeout: a stuck or
unreachable Redis must hold up neither a publisher nor a connection. A failed send loses
nothing (subscribers fill gaps from the event log); a failed join is retried by the sweep.

``TopicSends`` is an event loop's queue of event broadcasts (its node's, ``realtime.node``),
sent one at a time per topic so that they reach Redis in seq order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from channels.layers import get_channel_layer

from core.breaker import CircuitOpen, redis_breaker

from .messages import group_name

logger = logging.getLogger(__name__)

# A broadcast runs on the publisher's request path after commit. A channel layer that
# hangs (Redis down, a full buffer) must not hold the publisher up for long; the
# receivers catch up from the log.
SEND_TIMEOUT_SECONDS = 2.0

# Seconds a group join or leave may take before it counts as failed (a stuck Redis); a
# failed join is retried by the sweep, events meanwhile come from the log.
GROUP_TIMEOUT_S = 2.0


async def group_send_bounded(group: str, message: dict[str, Any]) -> None:
    """``group_send`` through the channel layer's breaker, given up after
    SEND_TIMEOUT_SECONDS (a stuck Redis); raises ``CircuitOpen`` at once while Redis is
    known to be down, so publishes do not wait on it."""

    async def send() -> None:
        await asyncio.wait_for(get_channel_layer().group_send(group, message), SEND_TIMEOUT_SECONDS)

    await redis_breaker("channel-layer").acall(send)


async def group_join(layer: Any, group: str, channel: str) -> bool:
    """Join ``channel`` to ``group`` through the channel layer's breaker, within
    GROUP_TIMEOUT_S; False (logged) when Redis is down or stuck. Whoever joins keeps the
    failed group and retries it at the next sweep; events meanwhile come from the log."""

    async def join() -> None:
        await asyncio.wait_for(layer.group_add(group, channel), GROUP_TIMEOUT_S)

    try:
        await redis_breaker("channel-layer").acall(join)
    except Exception:
        logger.warning("group join %s failed; the sweep retries it", group)
        return False
    return True


async def group_leave(layer: Any, group: str, channel: str) -> None:
    """Leave ``group`` within GROUP_TIMEOUT_S; a failure is logged (the join expires)."""
    try:
        await asyncio.wait_for(layer.group_discard(group, channel), GROUP_TIMEOUT_S)
    except Exception:
        logger.warning("group leave %s failed", group)


class TopicSends:
    """An event loop's broadcasts, sent one at a time per topic in the order handed over.

    Database threads store the events of one topic in seq order (the cursor row lock)
    and hand their broadcasts over in that order (``services`` holds the topic's
    ordering lock until then). Sending each in its own task could still reorder them on
    the way to Redis, and every connection that then sees seq N+1 before N would read
    the gap from the database: at 100 publishes/s that was half of the database
    threads' time. One sender per topic keeps them in order; topics go side by side.
    """

    def __init__(self) -> None:
        self.queues: dict[str, collections.deque[tuple[int, dict[str, Any]]]] = {}

    def submit(self, topic: str, seq: int, message: dict[str, Any]) -> None:
        queue = self.queues.get(topic)
        if queue is not None:  # a sender is running for this topic
            queue.append((seq, message))
            return
        self.queues[topic] = collections.deque([(seq, message)])
        asyncio.get_running_loop().create_task(self._send_all(topic))

    async def _send_all(self, topic: str) -> None:
        queue = self.queues[topic]
        try:
            while queue:
                seq, message = queue.popleft()
                try:
                    await group_send_bounded(group_name(topic), message)
                except CircuitOpen:  # logged once by the breaker; receivers catch up
                    logger.debug("channel layer down; %s#%s not broadcast", topic, seq)
                except Exception as exc:
                    logger.error(
                        "broadcast of %s#%s failed (%r); subscribers will catch up from"
                        " the event log",
                        topic,
                        seq,
                        exc,
                    )
        finally:
            del self.queues[topic]
