"""Fan-out of stored events to the channel layer, once their transaction has committed.

``realtime.services`` registers ``broadcast_event`` with ``transaction.on_commit``; no
other module sends events. A failed send is logged and swallowed: the event is already
stored, and every connection fills a gap from the event log before it delivers anything
later (PROTOCOL §7), so a lost broadcast delays delivery and loses nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from functools import partial
from typing import Any

import orjson
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from realtime.db import calling_loop
from realtime.models import Event
from wedsync.breaker import CircuitOpen, redis_breaker
from wedsync.selectors import wire_time

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
        await asyncio.wait_for(
            get_channel_layer().group_send(group, message), SEND_TIMEOUT_SECONDS
        )

    await redis_breaker("channel-layer").acall(send)


def _sent(topic: str, seq: int, future: concurrent.futures.Future) -> None:
    """Log a broadcast handed to the event loop that failed (receivers catch up)."""
    exc = future.exception() if not future.cancelled() else None
    if exc is None or isinstance(exc, CircuitOpen):
        return
    logger.error(
        "broadcast of %s#%s failed (%r); subscribers will catch up from the event log",
        topic,
        seq,
        exc,
    )


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
            future = asyncio.run_coroutine_threadsafe(
                group_send_bounded(group_name(event.topic), message), loop
            )
            future.add_done_callback(partial(_sent, event.topic, event.seq))
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
