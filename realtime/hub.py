"""In-process fan-out: one channel-layer subscription per topic per server process.

Without the hub every connection joins its topics' groups, and the layer hands each
event to each connection's own queue: one message decode, one consumer wake-up and one
dispatch per delivery. With it, the process joins a topic's group once (when its first
local connection subscribes), receives each event once, and puts the already encoded
frame straight into each local connection's outbox in seq order
(``RealtimeConsumer.hub_event``). Ordering and repair are unchanged: a connection that
sees a gap fills it from the event log before it takes later events (``delivery``).

Presence diffs and access re-checks sent to a topic's group arrive here too and are
handed to the local connections of that topic. The notices about users (a user
deactivated: close their connections; a user's rights shrank: re-check all their topics)
come through one group every hub joins
(``ACCESS_GROUP``): a connection has no channel-layer channel or group of its own, and
costs the layer nothing (docs/adr/0013-connections-without-a-layer-channel.md).

The hub keeps each topic's latest events (``realtime.replay.Recent``) and stays in a
topic's group for RECENT_S after its last local connection left: a client that comes
back within it resumes from memory, without a query. One hub per event loop: its node's
(``realtime.node``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from channels.layers import get_channel_layer

from .layer import group_join, group_leave
from .messages import (
    ACCESS_GROUP,
    EVENT,
    PRESENCE,
    RECHECK,
    USER_RECHECK,
    USER_REVOKED,
    group_name,
)
from .replay import RECENT_S, Recent, recent_bounds

logger = logging.getLogger(__name__)


class Member(Protocol):
    """What the hub needs of a local connection."""

    def hub_event(
        self, topic: str, seq: int, text: str, stored_at: float | None = None
    ) -> None: ...

    def hub_presence(self, topic: str, text: str) -> None: ...

    async def rt_recheck(self, message: dict) -> None: ...

    async def rt_user_revoked(self, message: dict) -> None: ...


class TopicHub:
    """The local connections of each topic, behind one group membership per topic."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.topics: dict[str, set[Member]] = {}
        # The local connections of each user: a tuple (a few at most, the per-user slots
        # cap them), ~56 bytes for one where a set was ~216 (ADR 0035).
        self.users: dict[int, tuple[Member, ...]] = {}
        self.unjoined: set[str] = set()  # topics whose group join failed; retried
        self.recent: dict[str, Recent] = {}  # each joined topic's latest events
        # Topics without local connections whose group the hub stays in for RECENT_S,
        # keeping their recent events for the clients that come back (a storm).
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._joining: set[str] = set()  # topics whose group join is under way
        self._recent_bounds = recent_bounds()
        self._access: asyncio.Future[bool] | None = None  # the ACCESS_GROUP join
        self.channel: str | None = None
        self._reader: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        # Re-checks the access of some connections (``rt.user.recheck``); set by the
        # node's ConsumerRegistry, which does the batched check.
        self.recheck: Callable[[list[Any]], Awaitable[None]] | None = None

    async def join(self, topic: str, member: Member) -> None:
        """Deliver ``topic``'s events to ``member`` from now on."""
        members = self.topics.get(topic)
        if members is not None:  # in the group already (or lingering there)
            members.add(member)
            timer = self._lingering.pop(topic, None)
            if timer is not None:
                timer.cancel()
            return
        self.topics[topic] = {member}
        self.recent[topic] = Recent(*self._recent_bounds)
        await self._group_add(topic)

    async def leave(self, topic: str, member: Member) -> None:
        """Stop delivering to ``member``. The last local connection of a topic leaves its
        group RECENT_S later, unless one comes back: clients that lost their connection
        resume from the recent events meanwhile."""
        members = self.topics.get(topic)
        if members is None:
            return
        members.discard(member)
        if members or topic in self._lingering:
            return
        loop = asyncio.get_running_loop()
        self._lingering[topic] = loop.call_later(RECENT_S, self._end_linger, topic)

    def _end_linger(self, topic: str) -> None:
        self._lingering.pop(topic, None)
        if self.topics.get(topic):
            return
        self.topics.pop(topic, None)
        self.recent.pop(topic, None)
        self.unjoined.discard(topic)
        if self.channel is not None:
            self.spawn(group_leave(self.layer, group_name(topic), self.channel))

    def recent_of(self, topic: str) -> Recent | None:
        """``topic``'s recent events when the hub is in its group, else None."""
        return None if topic in self.unjoined else self.recent.get(topic)

    def saw(self, topic: str, seq: int) -> None:
        """A local connection got ``topic``'s event ``seq`` from the log (``Recent.saw``)."""
        recent = self.recent.get(topic)
        if recent is not None:
            recent.saw(seq)

    def check_heads(self, heads: dict[str, int]) -> None:
        """The topics' heads in the log, read by the sweep (``Recent.check_head``)."""
        for topic, recent in self.recent.items():
            recent.check_head(heads.get(topic, 0))

    def in_group(self, topic: str) -> bool:
        """Whether the hub is in ``topic``'s group now (joined, not joining or failed)."""
        return topic in self.recent and topic not in self._joining and topic not in self.unjoined

    async def watch_user(self, user_id: int, member: Member) -> None:
        """Hand notices about ``user_id`` to ``member`` from now on (its connect)."""
        members = self.users.get(user_id, ())
        if member not in members:
            self.users[user_id] = (*members, member)
        if self._access is None:  # the first connection joins; a failed join the sweep retries
            self._access = asyncio.ensure_future(self._join_access())
        await asyncio.shield(self._access)

    def unwatch_user(self, user_id: int, member: Member) -> None:
        members = self.users.get(user_id)
        if members is not None and member in members:
            rest = tuple(m for m in members if m is not member)
            if rest:
                self.users[user_id] = rest
            else:
                del self.users[user_id]

    async def _join_access(self) -> bool:
        try:
            channel = await self._ensure_channel()
        except Exception:
            logger.warning("hub: no channel for user notices; the sweep retries it")
            return False
        return await group_join(self.layer, ACCESS_GROUP, channel)

    async def retry_joins(self) -> None:
        """Join the groups a failed join left out (the sweep calls this)."""
        for topic in sorted(self.unjoined):
            if topic in self.topics:
                await self._group_add(topic)
        access = self._access
        if self.users and access is not None and access.done() and not access.result():
            self._access = asyncio.ensure_future(self._join_access())
            await asyncio.shield(self._access)

    async def _ensure_channel(self) -> str:
        if self.channel is None:
            self.channel = await self.layer.new_channel(prefix="hub.")
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read(self.channel))
        return self.channel

    async def _group_add(self, topic: str) -> None:
        self._joining.add(topic)
        try:
            joined = await self._join_group(topic)
        finally:
            self._joining.discard(topic)
        if joined:
            self.unjoined.discard(topic)
        else:
            self.unjoined.add(topic)
            recent = self.recent.get(topic)
            if recent is not None:  # events may have been missed: start afresh
                recent.reset()

    async def _join_group(self, topic: str) -> bool:
        try:
            channel = await self._ensure_channel()
        except Exception:  # the layer cannot reach Redis to make the channel
            logger.warning("hub: no channel for %s; the sweep retries it", topic)
            return False
        return await group_join(self.layer, group_name(topic), channel)

    async def _read(self, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # the layer's connection failed; it reconnects by itself
                logger.warning("hub: receive failed", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            try:
                self.dispatch(message)
            except Exception:
                logger.exception("hub: dispatch of %s failed", message.get("type"))
            # Let the outboxes write between events: a backlog read without a pause would
            # fill every outbox before any of them could drain.
            await asyncio.sleep(0)

    def dispatch(self, message: dict[str, Any]) -> None:
        """Hand one group message (``realtime.messages``) to the local connections of its
        topic (or user)."""
        kind = message.get("type")
        if kind in (USER_REVOKED, USER_RECHECK):
            self._dispatch_user(kind, message)
            return
        topic = message.get("topic")
        members = self.topics.get(topic) if isinstance(topic, str) else None
        if members is None:
            return
        if kind == EVENT:
            seq, text, stored_at = message["seq"], message["text"], message.get("stored_at")
            recent = self.recent.get(topic)  # type: ignore[arg-type]
            if recent is not None:
                recent.add(seq, text)
            for member in list(members):
                member.hub_event(topic, seq, text, stored_at)
        elif kind == PRESENCE:
            for member in list(members):
                member.hub_presence(topic, message["text"])
        elif kind == RECHECK:
            for member in list(members):
                self.spawn(member.rt_recheck(message))

    def _dispatch_user(self, kind: str, message: dict[str, Any]) -> None:
        """A notice about a user, to that user's local connections."""
        members = self.users.get(message.get("user_id"), ())  # type: ignore[arg-type]
        if kind == USER_REVOKED:
            for member in members:
                self.spawn(member.rt_user_revoked(message))
        elif members and self.recheck is not None:  # USER_RECHECK: one batched check
            self.spawn(self.recheck(list(members)))

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
