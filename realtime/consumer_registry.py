"""The live connections of one event loop (its node's, ``realtime.node``): the periodic
sweep, the periodic re-check of their access, and the drain of a graceful shutdown.

The access re-check (every ``REALTIME_ACCESS_RECHECK`` seconds, and for the connections
of one user on ``rt.user.recheck``) reads the database in one database-thread call, a
few queries per 500 users (``access.connections_recheck``): a connection whose user is
gone or inactive, or whose password or token version changed since it connected, closes
with 4001; a topic it may no longer see ends with ``unsubscribed``. It catches what no
signal reported (``QuerySet.update``), and drops the stale cached entries it finds.

Not to be confused with the connection counter (``realtime.connection_counts``), which
counts connections against the per-user and per-supplier limits across processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError

from core.db import in_db_thread

from .access import RECHECK_BATCH, connections_recheck
from .connection_counts import get_connection_counter
from .delivery import Outbox, TopicStream, catch_up_topic, topic_positions
from .errors import RealtimeError
from .presence import DiffBatcher, get_presence_store
from .protocol import CLOSE_OVERLOADED, CLOSE_RESTARTING, CLOSE_STALE, CLOSE_UNAUTHENTICATED
from .tokens import CONNECT_VERSION_ATTR

if TYPE_CHECKING:
    from .consumers import RealtimeConsumer
    from .hub import TopicHub

logger = logging.getLogger(__name__)


async def _poll_until(condition: Any, deadline: float) -> None:
    """Wait until ``condition()`` holds or the monotonic ``deadline`` passes."""
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110 -- bounded poll
        await asyncio.sleep(0.05)


class ConsumerRegistry:
    """The connections of an event loop: the periodic sweep and the graceful shutdown."""

    def __init__(self, hub: TopicHub, diffs: DiffBatcher) -> None:
        self._hub, self._diffs = hub, diffs
        self._consumers: set[RealtimeConsumer] = set()
        self._task: asyncio.Task | None = None
        self._recheck_task: asyncio.Task | None = None
        hub.recheck = self.recheck_access  # rt.user.recheck

    def add(self, consumer: RealtimeConsumer) -> None:
        self._consumers.add(consumer)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._sweep_forever())
        if self._recheck_task is None or self._recheck_task.done():
            self._recheck_task = asyncio.ensure_future(self._recheck_forever())

    def discard(self, consumer: RealtimeConsumer) -> None:
        self._consumers.discard(consumer)

    def __len__(self) -> int:
        return len(self._consumers)

    def consumers(self) -> list[RealtimeConsumer]:
        """A copy of the loop's connections; safe to call from another thread (the
        metrics sampler) while the event loop changes the set."""
        for _ in range(3):
            try:
                return list(self._consumers)
            except RuntimeError:  # the set changed size during the copy
                continue
        return []

    async def drain(self, grace: float) -> None:
        """Let the frames in flight finish (up to ``grace`` seconds), then close every
        connection with 1012 after what is queued for it, so its client reconnects
        elsewhere with ``since`` and misses nothing (the process is draining already:
        ``realtime.node.Process.shutdown``)."""
        deadline = time.monotonic() + grace
        await _poll_until(lambda: not any(c.inflight for c in self._consumers), deadline)
        consumers = list(self._consumers)
        logger.warning("shutting down: closing %d connections with 1012", len(consumers))
        await asyncio.gather(
            *(c.close(CLOSE_RESTARTING, "server restarting; reconnect") for c in consumers),
            return_exceptions=True,
        )
        await _poll_until(lambda: not self._consumers, deadline)
        await self._diffs.drain()  # the leaves of the closed connections

    async def _sweep_forever(self) -> None:
        interval = settings.REALTIME_SWEEP_INTERVAL
        # On while the hub remembers topics too: a lingering topic's memory is checked
        # against the log's head like any other (``TopicHub.check_heads``).
        while self._consumers or self._hub.recent:
            await asyncio.sleep(interval)
            try:
                await self.sweep(topic_positions)
            except Exception:
                logger.exception("sweep failed")

    async def _recheck_forever(self) -> None:
        while self._consumers:
            await asyncio.sleep(settings.REALTIME_ACCESS_RECHECK)
            try:
                await self.recheck_access()
            except DatabaseError:
                logger.warning("access re-check skipped: the database is unreachable")
            except Exception:
                logger.exception("access re-check failed")

    async def recheck_access(self, consumers: list[RealtimeConsumer] | None = None) -> None:
        """Re-check the access of ``consumers`` (default: every connection of the loop)
        against the database: close (4001) or unsubscribe what it no longer allows."""
        live = [
            c
            for c in (self.consumers() if consumers is None else consumers)
            if not c.closing and c.user is not None and c.user.is_authenticated
        ]
        # A database call per RECHECK_BATCH connections, each batch's fresh users taken
        # before the next is read: at most one batch of users is held twice at a time,
        # not every connection's (10,000 connections: ~10 MB that the process's heap kept
        # as its high-water mark; docs/adr/0035).
        for start in range(0, len(live), RECHECK_BATCH):
            # Not one that closed while an earlier batch was being checked.
            batch = [c for c in live[start : start + RECHECK_BATCH] if not c.closing]
            if not batch:
                continue
            verdicts, now = await in_db_thread(connections_recheck)(
                [(c.user, list(c.streams), c.full_view()) for c in batch]
            )
            for consumer, verdict in zip(batch, verdicts, strict=True):
                if verdict is None:
                    await consumer.close(CLOSE_UNAUTHENTICATED, "credentials withdrawn")
                    continue
                _take_fresh_user(consumer, now[consumer.user.pk])
                if verdict:
                    await consumer.withdraw(verdict)
            del verdicts, now

    async def _refresh_presence(self, consumers: list[RealtimeConsumer]) -> None:
        """Heartbeat the presence of every connection of the loop, in a few script
        runs; re-join where an entry was lost (expired during a stall, Redis lost it)."""
        live = [c for c in consumers if c.members and not c.closing]
        if not live:
            return
        try:
            lost = await get_presence_store().refresh_many(
                {c.conn_id: list(c.members) for c in live}
            )
        except RealtimeError:
            logger.warning("presence unavailable; not refreshed")
            return
        for consumer in live:
            if consumer.conn_id in lost:
                await consumer.rejoin_presence(lost[consumer.conn_id])

    async def sweep(self, topic_positions: Any) -> None:
        """Close stale connections, refresh presence, and repair silent gaps."""
        now = time.monotonic()
        consumers = list(self._consumers)
        topics: set[str] = set()
        for consumer in consumers:
            if now - consumer.last_seen > settings.REALTIME_IDLE_TIMEOUT:
                await consumer.close(CLOSE_STALE, "no frame for too long")
                continue
            topics.update(consumer.streams)
            consumer.outbox.release()  # an idle connection holds no writer task
        await self._refresh_presence(consumers)
        await get_connection_counter().heartbeat(
            c.connection for c in consumers if c.connection is not None and not c.closing
        )
        await self._hub.retry_joins()
        topics.update(self._hub.recent)  # the hub's memory of lingering topics too
        if not topics:
            return
        # One query for the whole loop: the current seq of every topic it follows.
        current = await topic_positions(sorted(topics))
        # The hub's memory must never answer a subscribe with a seq below the log's head.
        self._hub.check_heads(current)
        # Behind now and already behind that far at the last sweep: the layer lost the
        # message (or never had it), as for every connection of a topic through a Redis
        # outage; fill from the log, read once per topic for all of them.
        lagging: dict[str, list[tuple[RealtimeConsumer, TopicStream]]] = {}
        upto: dict[str, int] = {}
        for consumer in consumers:
            for topic, stream in list(consumer.streams.items()):
                if stream.syncing:
                    continue
                if stream.last_seq < stream.behind and not consumer.closing:
                    lagging.setdefault(topic, []).append((consumer, stream))
                    upto[topic] = max(upto.get(topic, 0), stream.behind)
                stream.behind = current.get(topic, 0)
        for topic, members in lagging.items():
            await self._catch_up(topic, members, upto[topic])

    async def _catch_up(
        self, topic: str, members: list[tuple[RealtimeConsumer, TopicStream]], upto: int
    ) -> None:
        owners = {id(consumer.outbox): consumer for consumer, _ in members}

        async def overflowed(outbox: Outbox) -> None:
            await owners[id(outbox)].close(CLOSE_OVERLOADED, "client too slow")

        try:
            last = await catch_up_topic(
                topic, [(stream, consumer.outbox) for consumer, stream in members], upto, overflowed
            )
        except DatabaseError:
            logger.warning("catch-up of %s skipped: the database is unreachable", topic)
            return
        if last:
            self._hub.saw(topic, last)


def _take_fresh_user(consumer: RealtimeConsumer, user: Any) -> None:
    """The connection acts as the user is now (a publish checks ``is_staff`` on it),
    keeping what it connected with (the token version)."""
    version = getattr(consumer.user, CONNECT_VERSION_ATTR, None)
    if version is not None:
        setattr(user, CONNECT_VERSION_ATTR, version)
    consumer.user = user
