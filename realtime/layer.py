"""Sends and joins through the channel layer, each bounded, and event broadcasts in order.

Every call into the layer goes through the layer's breaker and a timeout: a stuck or
unreachable Redis must hold up neither a publisher nor a connection. A failed send loses
nothing (subscribers fill gaps from the event log); a failed join is retried by the sweep.

``TopicSends`` is an event loop's queue of event broadcasts (its node's, ``realtime.node``),
sent in hand-over order, a batch per Redis round trip (``group_send_many``), so that each
topic's reach Redis in seq order.
"""

from __future__ import annotations

import asyncio
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


# Broadcasts sent in one Redis round trip at most (a batch's bytes stay well within what
# one pipeline should carry: an event frame is at most REALTIME_MAX_FRAME_BYTES).
MAX_BATCH = 256


async def group_send_many(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Send ``(group, message)`` pairs through the channel layer, in order, bounded and
    through the breaker like ``group_send_bounded``.

    With channels-redis's pub/sub layer (production's) all of them go in one Redis round
    trip per shard: a pipeline of ``PUBLISH``, taken under the shard connection's own lock
    as its ``publish`` does, so they reach Redis in this order. The layer sends one message
    per round trip and the process's sends wait for each other on that lock; on a busy
    event loop each of those waits is a turn of the loop, which is what made broadcasts
    late under an overload (docs/benchmarks.md, "the capacity of the mix"). This reads the
    layer's internals (``_get_layer``, ``_get_shard``, ``_get_group_channel_name`` and the
    shard's ``_lock``/``_redis``, channels-redis 4.3): a layer without them (another
    backend, the in-memory one of the embedded default) gets one ``group_send`` each.
    """
    layer = get_channel_layer()
    loop_layer = _pubsub_loop_layer(layer)
    if loop_layer is None:
        for group, message in messages:
            await group_send_bounded(group, message)
        return

    async def send() -> None:
        by_shard: dict[Any, list[tuple[str, bytes]]] = {}
        for group, message in messages:
            channel = loop_layer._get_group_channel_name(group)
            shard = loop_layer._get_shard(channel)
            by_shard.setdefault(shard, []).append((channel, layer.serialize(message)))
        for shard, items in by_shard.items():
            async with shard._lock:
                shard._ensure_redis()
                pipe = shard._redis.pipeline(transaction=False)
                for channel, data in items:
                    pipe.publish(channel, data)
                await pipe.execute()

    async def bounded() -> None:
        await asyncio.wait_for(send(), SEND_TIMEOUT_SECONDS)

    await redis_breaker("channel-layer").acall(bounded)


def _pubsub_loop_layer(layer: Any) -> Any | None:
    """The running loop's channels-redis pub/sub layer behind ``layer``, if it is one whose
    shards can pipeline (see ``group_send_many``); else None."""
    get_layer = getattr(type(layer), "_get_layer", None)
    if get_layer is None or not hasattr(layer, "serialize"):
        return None
    loop_layer = get_layer(layer)
    if not all(hasattr(loop_layer, name) for name in ("_get_shard", "_get_group_channel_name")):
        return None
    return loop_layer


class TopicSends:
    """An event loop's broadcasts, sent in the order handed over, in batches.

    Database threads store the events of one topic in seq order (the cursor row lock)
    and hand their broadcasts over in that order (``services`` holds the topic's
    ordering lock until then). Sending each in its own task could reorder them on the way
    to Redis, and every connection that then sees seq N+1 before N would read the gap
    from the database: at 100 publishes/s that was half of the database threads' time.
    One sender takes everything handed over so far, every topic's, in hand-over order,
    and sends it in one round trip (``group_send_many``, at most ``MAX_BATCH``): each
    topic's broadcasts stay in seq order, and a burst costs one wait for Redis instead of
    one per event (one per event, a critical event waited behind all the others).
    A failed batch is logged and dropped: its events are stored, and subscribers fill the
    gap from the log (PROTOCOL §7), as they did for a failed single send.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[str, int, dict[str, Any]]] = []
        self._sender: asyncio.Task | None = None
        # Batches and broadcasts sent (tests, diagnosis).
        self.batches = 0
        self.sent = 0

    def submit(self, topic: str, seq: int, message: dict[str, Any]) -> None:
        self._pending.append((topic, seq, message))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                try:
                    await group_send_many([(group_name(topic), msg) for topic, _, msg in batch])
                    self.batches += 1
                    self.sent += len(batch)
                except CircuitOpen:  # logged once by the breaker; receivers catch up
                    logger.debug("channel layer down; %d broadcasts not sent", len(batch))
                except Exception as exc:
                    first, last = batch[0], batch[-1]
                    logger.error(
                        "broadcast of %d events (%s#%s .. %s#%s) failed (%r); subscribers"
                        " will catch up from the event log",
                        len(batch),
                        first[0],
                        first[1],
                        last[0],
                        last[1],
                        exc,
                    )
        finally:
            self._sender = None
