"""Per-connection delivery: seq order without gap or duplicate, and a bounded outbox.

The channel layer is a fast path only. Whatever it loses, reorders or repeats, the
connection repairs from the event log (PROTOCOL §7): a duplicate (seq already sent) is
dropped, a gap (seq beyond the next one) is filled from the database before the later
event goes out. While a topic is being (re)synchronised, live events wait in
``pending`` and are merged afterwards.

Under overload (docs/adr/0031-priority-under-overload.md) a connection's outbox writes
critical events (emergencies, timeline changes) before queued frames of *other* topics and
presence, never before an earlier frame of their own topic or a reply; and it sheds, in
this order, presence diffs (from a quarter full), then ordinary events (from half full:
the topic stops being queued and is delivered from the log once the outbox has room, by
the next event or the sweep: late, never with a gap), never a critical event. A topic
shed by more than the outbox's size is the slow-client path of old: closed with 1013, the
client resumes with ``since``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from django.conf import settings

from core import metrics
from core.db import BACKGROUND, ORDINARY, db_priority, in_db_thread

from . import selectors
from .limits import event_class
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
    # Ordinary events of the topic are being shed (the outbox is congested): none is queued
    # until it has room again; then the log fills the topic from ``last_seq`` on.
    shed: bool = False

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


# What this process's outboxes shed, by kind ("presence", "event"): tests, the benchmark.
shed_counts: Counter[str] = Counter()

_EVENT_FIELD = '"event":"'
_classified: list = [None, False]  # the last frame text classified, and its answer


def frame_is_critical(text: str) -> bool:
    """Whether an event frame is of a critical event (``limits.event_class``). The hub hands
    one text to every subscriber of the topic: the answer is kept for the last text."""
    if _classified[0] is text:
        return _classified[1]
    start = text.find(_EVENT_FIELD, 0, 300)
    critical = False
    if start >= 0:
        start += len(_EVENT_FIELD)
        end = text.find('"', start, start + 64)
        critical = end > 0 and event_class(text[start:end]) == "critical"
    _classified[0], _classified[1] = text, critical
    return critical


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

    __slots__ = ("_broken", "_head", "_idle", "_items", "_maxsize", "_priority",
                 "_put_timeout", "_room", "_send", "_topics", "_urgent", "_wake",
                 "_writer")  # fmt: skip

    def __init__(
        self, send: Callable[[str], Awaitable[None]], *, maxsize: int, put_timeout: float
    ) -> None:
        self._send = send
        # (frame, when its event was stored or None): the latency metric is taken when
        # the frame is written, for live events only (a replay of old events is not late).
        # Frames before ``_head`` are written; the list is emptied when all are.
        self._items: list[tuple[str, float | None, str | None]] = []
        self._head = 0
        self._maxsize = maxsize
        self._put_timeout = put_timeout
        self._writer: asyncio.Task | None = None
        self._wake: asyncio.Future[bool] | None = None  # the writer waiting for frames
        self._room: asyncio.Future | None = None  # put() calls waiting for room
        self._idle: asyncio.Future | None = None  # a drain() waiting for an empty queue
        self._broken = False  # stopped, or the socket failed: frames are dropped
        # Priority (ADR 0031): critical event frames that may go before ``_items``, and
        # what they may not pass: per topic, its frames queued in ``_items`` (an event's
        # topic, or None for a frame of no known topic: a reply, a replayed event). Made
        # when needed and dropped when empty: an idle connection holds neither.
        self._priority = settings.REALTIME_PRIORITY
        self._urgent: list[tuple[str, float | None, str | None]] | None = None
        self._topics: dict[str | None, int] | None = None

    @property
    def depth(self) -> int:
        """Frames queued and not yet being written."""
        urgent = self._urgent
        return len(self._items) - self._head + (len(urgent) if urgent else 0)

    @property
    def maxsize(self) -> int:
        """Frames queued at most; a live event beyond it closes the connection (1013)."""
        return self._maxsize

    def sheds_presence(self) -> bool:
        """A quarter full: presence diffs are dropped (the first thing shed)."""
        return self.depth * 4 >= self._maxsize if self._priority else self.depth >= self._maxsize

    def sheds_ordinary(self) -> bool:
        """Half full: ordinary events are shed (delivered later from the log)."""
        return self._priority and self.depth * 2 >= self._maxsize

    def has_room(self) -> bool:
        """Below a quarter full again: a shed topic may be filled from the log."""
        return self.depth * 4 < self._maxsize

    def _pop(self) -> tuple[str, float | None]:
        urgent = self._urgent
        if urgent:
            text, stored_at, _ = urgent.pop(0)
            if not urgent:
                self._urgent = None
            return text, stored_at
        items, head = self._items, self._head
        item = items[head]
        topics = self._topics
        if topics is not None:
            count = topics.get(item[2], 0) - 1
            if count > 0:
                topics[item[2]] = count
            else:
                topics.pop(item[2], None)
        head += 1
        if head == len(items):
            items.clear()
            head = 0
            self._topics = None
        elif head >= 64 and head * 2 >= len(items):  # a backlog never fully written
            del items[:head]
            head = 0
        self._head = head
        return item[0], item[1]

    async def _write(self) -> None:
        send = self._send
        loop = asyncio.get_running_loop()
        try:
            while not self._broken:
                if not self._items and not self._urgent:
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

    def put_nowait(
        self, text: str, stored_at: float | None = None, topic: str | None = None
    ) -> None:
        """Queue a frame after every frame queued; ``topic``: the event frame's topic (a
        frame of no topic, such as a reply, is never passed by a critical event)."""
        self._queue(text, stored_at, topic, urgent=False)

    def put_event(
        self, topic: str, text: str, stored_at: float | None = None, *, critical: bool
    ) -> None:
        """Queue a live event frame of ``topic``: a critical one goes before the queued
        frames of other topics and presence when no earlier frame of its own topic and no
        reply is queued (seq order within a topic never changes)."""
        topics = self._topics
        urgent = critical and self._priority
        if urgent and topics:  # an earlier frame of its topic, or a reply, stays ahead
            urgent = not topics.get(topic) and not topics.get(None)
        self._queue(text, stored_at, topic, urgent=urgent)

    def put_presence(self, text: str) -> bool:
        """Queue a presence diff unless the outbox sheds presence; whether it was queued."""
        if self._broken or self.sheds_presence():
            return False
        self._queue(text, None, "", urgent=False)  # "": passed by any critical event
        return True

    def _queue(
        self, text: str, stored_at: float | None, topic: str | None, *, urgent: bool
    ) -> None:
        if self._broken:
            return
        if self.depth >= self._maxsize:
            raise OutboxFull
        if urgent:
            if self._urgent is None:
                self._urgent = []
            self._urgent.append((text, stored_at, topic))
        else:
            self._items.append((text, stored_at, topic))
            if self._priority and topic != "":
                topics = self._topics
                if topics is None:
                    topics = self._topics = {}
                topics[topic] = topics.get(topic, 0) + 1
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
        self._urgent = self._topics = None
        self._head = 0
        if self._writer is not None:
            self._writer.cancel()


async def fill(stream: TopicStream, outbox: Outbox, upto: int | None, *, live: bool) -> None:
    """Send the logged events after ``stream.last_seq`` (up to ``upto``), page by page.
    A live gap's fill is ordinary database work, a replay background work (ADR 0031)."""
    while upto is None or stream.last_seq < upto:
        with db_priority(ORDINARY if live else BACKGROUND):
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
                outbox.put_nowait(text, stored_at, stream.topic)
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
    outbox.put_nowait(stream.view(text), stored_at, stream.topic)
    metrics.delivered()
    stream.last_seq = seq
    stream.shed = False


async def finish_sync(stream: TopicStream, outbox: Outbox) -> None:
    """End a (re)synchronisation: merge the live events that arrived meanwhile, in order."""
    stream.syncing = False
    pending, stream.pending = stream.pending, {}
    for seq in sorted(pending):
        await deliver(stream, outbox, seq, pending[seq])
