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

from core import metrics
from core.db import in_db_thread

from . import selectors
from .models import TopicCursor
from .protocol import event_frame_text, plan_view_text

logger = logging.getLogger(__name__)

# Events fetched from the log per query when filling a gap or replaying.
PAGE = 500


class OutboxFull(Exception):
    """The client does not read fast enough; the connection must close with 1013."""


@dataclass(slots=True)
class TopicStream:
    """What one connection has delivered of one topic."""

    topic: str
    last_seq: int = 0
    syncing: bool = True
    pending: dict[int, str] = field(default_factory=dict)
    # The topic's seq seen by the previous sweep: still undelivered at the next sweep
    # means the layer lost it, and the sweep fills it from the log.
    behind: int = 0
    # The reader sees the run sheet only (``access.plan_only``): every frame of the topic
    # goes out through ``view``.
    plan_only: bool = False

    def view(self, text: str) -> str:
        """An event frame as this stream's reader may see it (``protocol.plan_view_text``)."""
        return plan_view_text(text) if self.plan_only else text


def _events_after(topic: str, after: int, upto: int | None) -> list[tuple[int, str, float]]:
    """(seq, frame text, when it was stored) of the logged events after ``after``."""
    events = selectors.events_since(topic, after, limit=PAGE)
    return [
        (e.seq, event_frame_text(e), e.created_at.timestamp())
        for e in events
        if upto is None or e.seq <= upto
    ]


events_after = in_db_thread(_events_after)


def _topic_positions(names: list[str]) -> dict[str, int]:
    return dict(TopicCursor.objects.filter(topic__in=names).values_list("topic", "last_seq"))


async def catch_up_topic(
    topic: str,
    streams: list[tuple[TopicStream, Outbox]],
    upto: int,
    on_full: Callable[[Outbox], Awaitable[None]],
) -> int:
    """Deliver the logged events of ``topic`` up to ``upto`` to every stream of ``streams``
    that lacks them (the sweep's catch-up after the channel layer lost messages): the log
    is read once, page by page from the stream furthest behind, for all of them, instead
    of once per connection. Each stream takes what it lacks in order (``deliver``: a
    duplicate dropped, a gap filled); an outbox that overflows is handed to ``on_full``
    (its connection closes) and skipped. Returns the last seq read (0: none)."""
    after = min(stream.last_seq for stream, _ in streams)
    full: set[int] = set()
    last = 0
    while after < upto:
        page = await events_after(topic, after, upto)
        if not page:
            break
        for stream, outbox in streams:
            if id(outbox) in full or stream.syncing:
                continue
            try:
                for seq, text, stored_at in page:
                    if seq > stream.last_seq:
                        await deliver(stream, outbox, seq, text, stored_at)
            except OutboxFull:
                full.add(id(outbox))
                await on_full(outbox)
        last = after = page[-1][0]
        if len(page) < PAGE:
            break
    return last


# The current seq of each topic (one query for the whole process): the sweep's check for
# events the channel layer lost (``ConsumerRegistry.sweep``).
topic_positions = in_db_thread(_topic_positions)


class Outbox:
    """A bounded queue of text frames written to the socket in order, by one writer task.

    Live fan-out uses ``put_nowait`` and raises ``OutboxFull`` when the client is behind
    by ``maxsize`` frames, so one slow client never delays the others. Replies and
    replays use ``put``, which waits (bounded by ``put_timeout``) for room.

    Built for thousands of mostly idle connections: a list, and a future only while the
    writer waits for frames. The writer task starts with the first frame and ends when
    ``release`` finds it waiting (the sweep calls it, so an idle connection holds no
    task); the next frame starts another. An ``asyncio.Queue`` with a writer task for the
    connection's whole life held ~4.6 KB per connection (four deques, an event, the task
    and its coroutine); this holds ~0.3 KB idle (docs/benchmarks.md).
    """

    __slots__ = ("_broken", "_head", "_idle", "_items", "_maxsize", "_put_timeout", "_room",
                 "_send", "_wake", "_writer")  # fmt: skip

    def __init__(
        self, send: Callable[[str], Awaitable[None]], *, maxsize: int, put_timeout: float
    ) -> None:
        self._send = send
        # (frame, when its event was stored or None): the latency metric is taken when
        # the frame is written, for live events only (a replay of old events is not late).
        # Frames before ``_head`` are written; the list is emptied when all are.
        self._items: list[tuple[str, float | None]] = []
        self._head = 0
        self._maxsize = maxsize
        self._put_timeout = put_timeout
        self._writer: asyncio.Task | None = None
        self._wake: asyncio.Future[bool] | None = None  # the writer waiting for frames
        self._room: asyncio.Future | None = None  # put() calls waiting for room
        self._idle: asyncio.Future | None = None  # a drain() waiting for an empty queue
        self._broken = False  # stopped, or the socket failed: frames are dropped

    @property
    def depth(self) -> int:
        """Frames queued and not yet being written."""
        return len(self._items) - self._head

    def _pop(self) -> tuple[str, float | None]:
        items, head = self._items, self._head
        item = items[head]
        head += 1
        if head == len(items):
            items.clear()
            head = 0
        elif head >= 64 and head * 2 >= len(items):  # a backlog never fully written
            del items[:head]
            head = 0
        self._head = head
        return item

    async def _write(self) -> None:
        send = self._send
        loop = asyncio.get_running_loop()
        try:
            while not self._broken:
                if not self._items:
                    idle, self._idle = self._idle, None
                    if idle is not None and not idle.done():
                        idle.set_result(None)
                    self._wake = loop.create_future()
                    if not await self._wake:  # False: released while idle
                        return
                    continue
                text, stored_at = self._pop()
                room = self._room
                if room is not None and not room.done():
                    room.set_result(None)
                try:
                    await send(text)
                except Exception:  # a socket already gone; the disconnect cleans up
                    logger.debug("send failed", exc_info=True)
                    self._broken = True
                    return
                if stored_at is not None:
                    metrics.delivery_latency(time.time() - stored_at)
        finally:
            self._writer = self._wake = None
            idle, self._idle = self._idle, None
            if idle is not None and not idle.done():
                idle.set_result(None)

    def put_nowait(self, text: str, stored_at: float | None = None) -> None:
        if self._broken:
            return
        if self.depth >= self._maxsize:
            raise OutboxFull
        self._items.append((text, stored_at))
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result(True)
        elif self._writer is None:
            self._writer = asyncio.ensure_future(self._write())

    async def put(self, text: str) -> None:
        if self.depth >= self._maxsize and not self._broken:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._put_timeout):
                    while self.depth >= self._maxsize and not self._broken:
                        # One future for every waiter (a reply and a notice may wait at
                        # once); shielded, so one waiter's timeout does not wake the rest.
                        if self._room is None or self._room.done():
                            self._room = loop.create_future()
                        await asyncio.shield(self._room)
            except TimeoutError:
                raise OutboxFull from None
        self.put_nowait(text)

    def release(self) -> None:
        """End the writer task if it is waiting with nothing to write (the sweep)."""
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result(False)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything queued is written (bounded), e.g. before a close."""
        if self._writer is None or self._wake is not None:  # nothing queued or being written
            return
        if self._idle is None:
            self._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except TimeoutError:
            pass

    def stop(self) -> None:
        """The connection is gone: drop what is queued and write nothing more."""
        self._broken = True
        self._items.clear()
        self._head = 0
        if self._writer is not None:
            self._writer.cancel()


async def fill(stream: TopicStream, outbox: Outbox, upto: int | None, *, live: bool) -> None:
    """Send the logged events after ``stream.last_seq`` (up to ``upto``), page by page."""
    while upto is None or stream.last_seq < upto:
        page = await events_after(stream.topic, stream.last_seq, upto)
        if not page:
            return
        for seq, text, stored_at in page:
            if seq <= stream.last_seq:
                continue
            text = stream.view(text)
            if live:
                # Late events the layer lost (a gap, the sweep's catch-up through a Redis
                # outage) count in the delivery latency as they are: how late they are is
                # what the latency alert must see.
                outbox.put_nowait(text, stored_at)
                metrics.delivered()
            else:
                await outbox.put(text)
            stream.last_seq = seq
        if len(page) < PAGE:
            return


async def deliver(
    stream: TopicStream, outbox: Outbox, seq: int, text: str, stored_at: float | None = None
) -> None:
    """Send one live event in order: drop a duplicate, fill a gap from the log first.
    ``stored_at``: when it was stored, for an event read from the log (the latency)."""
    if stream.syncing:
        stream.pending[seq] = text
        return
    if seq <= stream.last_seq:
        return
    if seq > stream.last_seq + 1:
        await fill(stream, outbox, seq - 1, live=True)
        if seq <= stream.last_seq:
            return
    outbox.put_nowait(stream.view(text), stored_at)
    metrics.delivered()
    stream.last_seq = seq


async def finish_sync(stream: TopicStream, outbox: Outbox) -> None:
    """End a (re)synchronisation: merge the live events that arrived meanwhile, in order."""
    stream.syncing = False
    pending, stream.pending = stream.pending, {}
    for seq in sorted(pending):
        await deliver(stream, outbox, seq, pending[seq])
