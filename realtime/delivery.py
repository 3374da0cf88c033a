"""Per-connection delivery: seq order without gap or duplicate, and a bounded outbox.

The channel layer is a fast path only. Whatever it loses, reorders or repeats, the
connection repairs from the event log (PROTOCOL §7): a duplicate (seq already sent) is
dropped, a gap (seq beyond the next one) is filled from the database before the later
event goes out. While a topic is being (re)synchronised, live events wait in
``pending`` and are merged afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from monitoring import metrics

from . import selectors
from .broadcast import event_frame_text
from .db import in_db_thread

logger = logging.getLogger(__name__)

# Events fetched from the log per query when filling a gap or replaying.
PAGE = 500


class OutboxFull(Exception):
    """The client does not read fast enough; the connection must close with 1013."""


@dataclass
class TopicStream:
    """What one connection has delivered of one topic."""

    topic: str
    last_seq: int = 0
    syncing: bool = True
    pending: dict[int, str] = field(default_factory=dict)
    # The topic's seq seen by the previous sweep: still undelivered at the next sweep
    # means the layer lost it, and the sweep fills it from the log.
    behind: int = 0


def _events_after(topic: str, after: int, upto: int | None) -> list[tuple[int, str]]:
    events = selectors.events_since(topic, after, limit=PAGE)
    return [(e.seq, event_frame_text(e)) for e in events if upto is None or e.seq <= upto]


events_after = in_db_thread(_events_after)


class Outbox:
    """A bounded queue of text frames written to the socket by one task, in order.

    Live fan-out uses ``put_nowait`` and raises ``OutboxFull`` when the client is behind
    by ``maxsize`` frames, so one slow client never delays the others. Replies and
    replays use ``put``, which waits (bounded by ``put_timeout``) for room.
    """

    def __init__(
        self, send: Callable[[str], Awaitable[None]], *, maxsize: int, put_timeout: float
    ) -> None:
        self._send = send
        # (frame, when its event was stored or None): the latency metric is taken when
        # the frame is written, for live events only (a replay of old events is not late).
        self._queue: asyncio.Queue[tuple[str, float | None]] = asyncio.Queue(maxsize=maxsize)
        self._put_timeout = put_timeout
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        queue, send = self._queue, self._send
        while True:
            text, stored_at = await queue.get()
            try:
                await send(text)
            except Exception:  # a socket already gone; the disconnect handler cleans up
                logger.debug("send failed", exc_info=True)
                return
            finally:
                queue.task_done()
            if stored_at is not None:
                metrics.delivery_latency(time.time() - stored_at)

    def put_nowait(self, text: str, stored_at: float | None = None) -> None:
        try:
            self._queue.put_nowait((text, stored_at))
        except asyncio.QueueFull:
            raise OutboxFull from None

    async def put(self, text: str) -> None:
        try:
            await asyncio.wait_for(self._queue.put((text, None)), self._put_timeout)
        except TimeoutError:
            raise OutboxFull from None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything queued is written (bounded), e.g. before a close."""
        if self._task.done():
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            pass

    def stop(self) -> None:
        self._task.cancel()


async def fill(stream: TopicStream, outbox: Outbox, upto: int | None, *, live: bool) -> None:
    """Send the logged events after ``stream.last_seq`` (up to ``upto``), page by page."""
    while upto is None or stream.last_seq < upto:
        page = await events_after(stream.topic, stream.last_seq, upto)
        if not page:
            return
        for seq, text in page:
            if seq <= stream.last_seq:
                continue
            if live:
                outbox.put_nowait(text)
                metrics.delivered()
            else:
                await outbox.put(text)
            stream.last_seq = seq
        if len(page) < PAGE:
            return


async def deliver(stream: TopicStream, outbox: Outbox, seq: int, text: str) -> None:
    """Send one live event in order: drop a duplicate, fill a gap from the log first."""
    if stream.syncing:
        stream.pending[seq] = text
        return
    if seq <= stream.last_seq:
        return
    if seq > stream.last_seq + 1:
        await fill(stream, outbox, seq - 1, live=True)
        if seq <= stream.last_seq:
            return
    outbox.put_nowait(text)
    metrics.delivered()
    stream.last_seq = seq


async def finish_sync(stream: TopicStream, outbox: Outbox) -> None:
    """End a (re)synchronisation: merge the live events that arrived meanwhile, in order."""
    stream.syncing = False
    pending, stream.pending = stream.pending, {}
    for seq in sorted(pending):
        await deliver(stream, outbox, seq, pending[seq])
