"""Fan-out of stored events to the channel layer, once their transaction has committed.

``realtime.services`` registers ``broadcast_event`` with ``transaction.on_commit``; no
other module sends events. A failed send is logged and swallowed: the event is already
stored, and every connection fills a gap from the event log before it delivers anything
later (PROTOCOL §7), so a lost broadcast delays delivery and loses nothing.

From a realtime database thread the send is handed to the event loop waiting for the
thread, whose node sends each topic's broadcasts in order (``realtime.layer.TopicSends``);
from anywhere else it is sent at once.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync

from core.breaker import CircuitOpen
from core.db import calling_loop
from realtime.models import Event

from .layer import group_send_bounded
from .messages import event_message, group_name
from .node import get_node
from .protocol import event_frame_text

logger = logging.getLogger(__name__)


def _submit(topic: str, seq: int, message: dict[str, Any]) -> None:
    """Queue a broadcast on the running loop (called there, through call_soon_threadsafe)."""
    get_node().sends.submit(topic, seq, message)


def broadcast_event(event: Event) -> None:
    """Send a committed event to its topic's group; never raises (failures are logged)."""
    try:
        message = event_message(
            event.topic,
            event.seq,
            event_frame_text(event),
            event.created_at.timestamp(),  # for the delivery latency metric
        )
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
