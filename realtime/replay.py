"""Where a subscribing connection starts each topic, and the events it missed (PROTOCOL §4).

From memory when this process's hub has them: the hub keeps each topic's latest events
as it received them (``Recent``), and a client that dropped a few seconds ago resumes
from there without a database query (``sync_from_memory``). Otherwise one call in a
database thread per subscribe frame, whatever the number of topics: for each topic its
current seq and, with ``since``, the first page of missed events, already encoded
(``sync_topics``). Reconnect storms multiply whatever a subscribe costs.

A ``since`` sent with another stream epoch than the present one (v1.1,
``realtime.epoch``) counts in another history: nothing is replayed for it
(``plan_syncs``).

The hub's view may trail the database by the events in flight to it, or by one the
channel layer lost: such an event reaches the connection like any live event, through
the hub or the gap fill before the next one or the sweep's catch-up (``delivery``), so
a subscriber still gets every event once and in order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

from core.db import in_db_thread

from . import selectors
from .delivery import PAGE, Outbox, TopicStream, fill, finish_sync
from .protocol import event_frame_text

if TYPE_CHECKING:
    from .hub import TopicHub


@dataclass(slots=True)
class Sync:
    """Where a connection starts one topic."""

    seq: int  # the topic's seq now (what the reply says)
    recovered: bool  # every event after ``since`` is still stored (True without since)
    start: int  # the seq delivery resumes after: ``since`` when recovered, else ``seq``
    # The first missed events (seq, frame text), at most PAGE; more are read page by
    # page when the topic has more than that after ``start``.
    events: list[tuple[int, str]] = field(default_factory=list)


def _sync_topics(since: dict[str, int | None]) -> dict[str, Sync]:
    """Per topic: its seq and, with ``since`` inside the retained history, the first
    page of the events ``since+1 … seq``.

    Outside the retained history (pruned, or a ``since`` beyond the topic's seq)
    ``recovered`` is False and delivery resumes after ``seq``: the client reloads the
    snapshot (PROTOCOL §4).
    """
    out: dict[str, Sync] = {}
    for topic, after in since.items():
        seq = selectors.topic_seq(topic)
        if after is None or after >= seq:
            out[topic] = Sync(seq, after is None or after == seq, seq)
            continue
        events = [e for e in selectors.events_since(topic, after, limit=PAGE) if e.seq <= seq]
        # Events are only ever removed from the old end: the history covers `after`
        # exactly when its first event is the next one.
        if not events or events[0].seq != after + 1:
            out[topic] = Sync(seq, False, seq)
            continue
        out[topic] = Sync(seq, True, after, [(e.seq, event_frame_text(e)) for e in events])
    return out


sync_topics = in_db_thread(_sync_topics)


# The latest events a hub keeps per topic: at most RECENT_MAX, received within RECENT_S.
# A client back within a minute of a drop (a phone's signal, a restarted server, a
# reconnect storm) resumes from memory. A minute of a busy wedding (a few events a
# second, ~0.4 KB each) is tens of KB per topic. Never more than retention keeps
# (REALTIME_RETENTION_EVENTS, _DAYS): memory replays nothing the log no longer holds.
RECENT_S = 60.0
RECENT_MAX = 256


def recent_bounds() -> tuple[int, float]:
    """(events, seconds) a hub keeps of each topic: RECENT_MAX and RECENT_S within retention."""
    return (
        max(0, min(RECENT_MAX, settings.REALTIME_RETENTION_EVENTS)),
        min(RECENT_S, settings.REALTIME_RETENTION_DAYS * 86400.0),
    )


class Recent:
    """The latest events of one topic as the hub received them, with no seq missing.

    ``last`` is the latest seq the hub knows: of the latest event it received, or read
    from the log right after it joined the topic's group (``seed``). A gap (a message
    the layer lost, or sent while the hub was not in the group) starts it afresh after
    the gap; a repeat is ignored.
    """

    __slots__ = ("behind", "frames", "last", "max_age", "max_events")

    def __init__(self, max_events: int = RECENT_MAX, max_age: float = RECENT_S) -> None:
        self.frames: deque[tuple[int, str, float]] = deque()  # (seq, frame text, received)
        self.last: int | None = None
        self.max_events, self.max_age = max_events, max_age
        # The topic's head in the log at the previous sweep (``check_head``).
        self.behind = 0

    @property
    def first(self) -> int:
        """The first seq held (``last + 1`` when none is)."""
        return self.frames[0][0] if self.frames else (self.last or 0) + 1

    def seed(self, seq: int) -> None:
        """The topic's seq read from the log after the hub joined its group: known from
        here on, if the hub knew nothing yet."""
        if self.last is None:
            self.last = seq

    def reset(self) -> None:
        """Forget everything (the hub may have missed events)."""
        self.frames.clear()
        self.last = None

    def saw(self, seq: int) -> None:
        """Event ``seq`` reached a connection from the log, not through the hub (a gap
        fill, the sweep's catch-up): beyond ``last``, the hub missed it, and its memory is
        not the topic's head any more. Forget it: the next subscribe reads the log."""
        if self.last is not None and seq > self.last:
            self.reset()

    def check_head(self, head: int) -> None:
        """The sweep read the topic's head from the log: when the memory is still short of
        the head the previous sweep read, the hub missed events (the layer lost them, as
        in a Redis outage) and its memory is forgotten, as in ``saw``. A head that is
        ahead only by events still in flight to the hub is left alone until then."""
        if self.last is not None and self.last < self.behind:
            self.reset()
        self.behind = head

    def add(self, seq: int, text: str, now: float | None = None) -> None:
        """Record the event ``seq`` received from the layer."""
        now = time.monotonic() if now is None else now
        frames = self.frames
        if self.last is not None:
            if seq <= self.last:
                return
            if seq != self.last + 1:
                frames.clear()
        frames.append((seq, text, now))
        self.last = seq
        while frames and (len(frames) > self.max_events or frames[0][2] < now - self.max_age):
            frames.popleft()


def sync_from_memory(recent: Recent | None, since: int | None) -> Sync | None:
    """Where to start a topic from the hub's recent events; None when the database must
    say (the hub knows nothing of the topic, or ``since`` is outside what it holds)."""
    if recent is None or recent.last is None:
        return None
    last = recent.last
    if since is None:
        return Sync(last, True, last)
    if since > last or since < recent.first - 1:
        return None
    return Sync(last, True, since, [(seq, text) for seq, text, _ in recent.frames if seq > since])


async def plan_syncs(
    hub: TopicHub,
    since: dict[str, int | None],
    epochs: dict[str, str | None] | None = None,
    epoch: str | None = None,
) -> dict[str, Sync]:
    """Where a subscribe starts each topic, given the client's ``since`` per topic; the
    connection is in the topics' groups already (``TopicHub.join``).

    From the hub's recent events where they cover ``since``; the rest from the log, in
    one database-thread call. A topic whose group the hub was in before that read gets
    the seq read as its recent events' start (``Recent.seed``): the topic's later
    subscribers start from memory.

    ``epochs`` (v1.1) holds the epoch the client sent with each ``since``, ``epoch`` the
    server's present one (``realtime.epoch``). A ``since`` of another epoch counts in
    another history: its topic starts at the present seq with ``recovered`` False and
    nothing replayed, as a ``since`` outside the retained history does. Without an epoch
    the ``since`` is taken as it is (v1).
    """
    stale = {
        topic
        for topic, told in (epochs or {}).items()
        if told is not None and told != epoch and since.get(topic) is not None
    }
    wanted = {topic: None if topic in stale else after for topic, after in since.items()}
    syncs: dict[str, Sync] = {}
    for topic, after in wanted.items():  # from the hub's recent events where it has them
        sync = sync_from_memory(hub.recent_of(topic), after)
        if sync is not None:
            syncs[topic] = sync
    if len(syncs) < len(wanted):
        rest = {t: after for t, after in wanted.items() if t not in syncs}
        seeding = [t for t in rest if hub.in_group(t)]  # in the group before the read
        syncs.update(await sync_topics(rest))
        for topic in seeding:
            recent = hub.recent_of(topic)
            if recent is not None:
                recent.seed(syncs[topic].seq)
    for topic in stale:
        syncs[topic] = Sync(syncs[topic].seq, False, syncs[topic].seq)
    return syncs


def _replayed(
    since: dict[str, int | None], epochs: dict[str, str | None] | None, epoch: str | None
) -> Iterator[tuple[str, int]]:
    """The topics a subscribe replays, with their ``since``: those with one, of the
    present epoch or none (a ``since`` of another epoch replays nothing, ``plan_syncs``)."""
    for topic, after in since.items():
        told = (epochs or {}).get(topic)
        if after is not None and (told is None or told == epoch):
            yield topic, after


def replay_bound(
    hub: TopicHub,
    since: dict[str, int | None],
    epochs: dict[str, str | None] | None = None,
    epoch: str | None = None,
) -> int | None:
    """At most what a subscribe's replays will cost (events), from the hub alone: its
    last seq of each topic less ``since`` (a topic the hub is not in: None, unknown). No
    read; what ``replay_need`` says exactly is never more (give or take events stored
    since the hub saw them)."""
    bound = 0
    for topic, after in _replayed(since, epochs, epoch):
        recent = hub.recent_of(topic)
        if recent is None or recent.last is None:
            return None
        bound += max(0, recent.last - after)
    return bound


def _replay_sizes(since: dict[str, int]) -> int:
    """How many events replaying each topic after its ``since`` will send: ``seq - since``
    where the retained history covers it (the log is gapless), none where it does not."""
    total = 0
    for topic, after in since.items():
        seq = selectors.topic_seq(topic)
        if after < seq and selectors.replay_covers(topic, after):
            total += seq - after
    return total


replay_sizes = in_db_thread(_replay_sizes)


async def replay_need(
    hub: TopicHub,
    since: dict[str, int | None],
    epochs: dict[str, str | None] | None = None,
    epoch: str | None = None,
) -> int:
    """What a subscribe's replays will cost (events), known before the log is read: from
    the hub's recent events where they cover ``since``, else from the topics' seqs and
    retained history (one database-thread call, a few index lookups, no event read). A
    ``since`` of another epoch replays nothing (``plan_syncs``). Asked so that a replay
    budget that cannot pay is refused before the pages are read (PROTOCOL §8)."""
    need, ask = 0, {}
    for topic, after in _replayed(since, epochs, epoch):
        sync = sync_from_memory(hub.recent_of(topic), after)
        if sync is not None:
            need += sync.seq - sync.start
        else:
            ask[topic] = after
    if ask:
        need += await replay_sizes(ask)
    return need


def forget_recent(hub: TopicHub) -> None:
    """Forget the recent events of every topic the hub holds: a new stream epoch
    (``realtime.epoch``) makes them another history's. Subscribes read the log until
    new events come."""
    for recent in hub.recent.values():
        recent.reset()


async def send_replay(stream: TopicStream, outbox: Outbox, sync: Sync) -> None:
    """Send what a new subscriber missed of a topic: the sync's events, the rest of the
    log page by page when there is more, then the live events held meanwhile."""
    for seq, text in sync.events:
        await outbox.put(stream.view(text))
        stream.last_seq = seq
    if stream.last_seq < sync.seq:  # more than a page: the rest page by page
        await fill(stream, outbox, sync.seq, live=False)
    await finish_sync(stream, outbox)
