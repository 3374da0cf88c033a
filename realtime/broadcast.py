"""Fan-out of stored events to the channel layer, once their transaction has committed.

``realtime.services`` registers ``broadcast_event`` with ``transaction.on_commit``; no
other module sends events. A failed send is logged and swallowed: the event is already
stored, and every connection fills a gap from the event log before it delivers anything
later (PROTOCOL §7), so a lost broadcast delays delivery and loses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import weakref
from typing import Any

import orjson
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from core.breaker import CircuitOpen, redis_breaker
from core.db import calling_loop
from core.wire import wire_time
from realtime.models import Event

logger = logging.getLogger(__name__)

# A broadcast runs on the publisher's request path after commit. A channel layer that
# hangs (Redis down, a full buffer) must not hold the publisher up for long; the
# receivers catch up from the log.
SEND_TIMEOUT_SECONDS = 2.0


def group_name(topic: str) -> str:
    """The channel-layer group of a topic: ``wedding:42`` → ``rt.wedding.42`` (no ':')."""
    return "rt." + str(topic).replace(":", ".")


utc_ms = wire_time  # the one wire format of times, shared with the domain payloads


def event_frame(event: Event) -> dict[str, Any]:
    """The PROTOCOL §6 event frame of a stored event."""
    frame: dict[str, Any] = {
        "type": "event",
        "topic": event.topic,
        "seq": event.seq,
        "event": event.event,
        "priority": event.priority,
        "payload": event.payload,
        "actor": {"user_id": event.actor_user_id, "supplier_id": event.actor_supplier_id},
        "ts": utc_ms(event.created_at),
    }
    if event.ack_required:
        frame["ack_required"] = True
    return frame


def event_frame_text(event: Event) -> str:
    """The event frame encoded once, so consumers forward it without re-encoding."""
    return orjson.dumps(event_frame(event)).decode()


async def group_send_bounded(group: str, message: dict[str, Any]) -> None:
    """``group_send`` through the channel layer's breaker, given up after
    SEND_TIMEOUT_SECONDS (a stuck Redis); raises ``CircuitOpen`` at once while Redis is
    known to be down, so publishes do not wait on it."""

    async def send() -> None:
        await asyncio.wait_for(get_channel_layer().group_send(group, message), SEND_TIMEOUT_SECONDS)

    await redis_breaker("channel-layer").acall(send)


class _TopicSends:
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


_senders: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TopicSends] = (
    weakref.WeakKeyDictionary()
)


def _submit(topic: str, seq: int, message: dict[str, Any]) -> None:
    """Queue a broadcast on the running loop (called there, through call_soon_threadsafe)."""
    loop = asyncio.get_running_loop()
    sender = _senders.get(loop)
    if sender is None:
        sender = _senders[loop] = _TopicSends()
    sender.submit(topic, seq, message)


def broadcast_event(event: Event) -> None:
    """Send a committed event to its topic's group; never raises (failures are logged)."""
    try:
        message = {
            "type": "rt.event",
            "topic": event.topic,
            "seq": event.seq,
            "text": event_frame_text(event),
            "stored_at": event.created_at.timestamp(),  # for the delivery latency metric
        }
        loop = calling_loop()
        if loop is not None and loop.is_running():
            # A realtime database thread: hand the send to the event loop and return, so
            # the thread is free for the next publish (the loop sends in call order).
            loop.call_soon_threadsafe(_submit, event.topic, event.seq, message)
            return
        async_to_sync(group_send_bounded)(group_name(event.topic), message)
    except CircuitOpen:  # the breaker logged the outage once; receivers catch up later
        logger.debug("channel layer down; %s#%s not broadcast", event.topic, event.seq)
    except Exception:
        logger.exception(
            "broadcast of %s#%s failed; subscribers will catch up from the event log",
            event.topic,
            event.seq,
        )
