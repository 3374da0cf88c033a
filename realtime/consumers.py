"""The WebSocket consumer at /ws/realtime/: one multiplexed connection per client.

It authenticates (the handshake middleware did the work), decodes each frame into a
typed message, calls a service, and replies. Ordering and gap repair live in
``delivery``, where a subscribe starts each topic in ``replay``; authorisation,
validation and storage in ``access``, ``topics``, ``catalogue`` and ``services``; what
the connections of an event loop share (the hub, the presence diffs, the sweep) in
``node``; the frames in ``protocol``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.exceptions import StopConsumer
from django.conf import settings
from django.db import DatabaseError

from core import metrics
from core.db import BACKGROUND, db_priority, in_db_thread
from core.logging import bind_connection

from . import protocol, services
from .access import authorize_and_describe, authorize_topics, connect_facts, still_allowed
from .auth import ADMISSION
from .connection_counts import Connection, get_connection_counter, supplier_limit
from .delivery import (
    Outbox,
    OutboxFull,
    TopicStream,
    fill,
    finish_sync,
    frame_is_critical,
    shed_counts,
)
from .epoch import CLOSE_EPOCH_CHANGED, observe, still_current
from .errors import RealtimeError
from .hub import TopicHub
from .limits import (
    PublishLimiter,
    get_user_limits,
    process_capacity,
    publish_priority,
    supplier_rank,
    user_slots,
)
from .node import get_node, process
from .presence import get_presence_store
from .protocol import (
    CLOSE_CONNECTION_LIMIT,
    CLOSE_OVERLOADED,
    CLOSE_POLICY,
    CLOSE_RESTARTING,
    CLOSE_TOO_LARGE,
    CLOSE_UNAUTHENTICATED,
)
from .replay import Sync, plan_syncs, replay_bound, replay_need, send_replay

logger = logging.getLogger(__name__)


# More units than any budget's burst: "is the bucket full?" (``UserLimits.holds``).
_FULL = 2**31


def _wedding_ids(topics: list[str]) -> list[int]:
    return [int(t.split(":", 1)[1]) for t in topics if t.startswith("wedding:")]


def _database_unavailable() -> RealtimeError:
    return RealtimeError(
        "unavailable",
        "the database is unreachable right now; nothing was stored, send it again"
        " (with the same idempotency_key) in a few seconds",
    )


# What of a WebSocket scope is kept once the connection is accepted (docs/adr/0035): the
# rest only the handshake reads (``RealtimeAuthMiddleware``, uvicorn's access log line),
# and the scope, shared with the server, lives as long as the connection: its headers,
# query string (the token), ASGI versions and state copy were ~1.3 KB a connection. Not
# the user either: the consumer holds it, and the access re-check replaces it with a fresh
# one, which must not leave the first alive in the scope for the connection's life.
_KEPT_AFTER_ACCEPT = ("type", "scheme", "client", "path")


class RealtimeConsumer:
    """One client's connection: subscriptions, publishes, presence, acks.

    A plain ASGI application rather than a channels consumer: events, presence diffs
    and access notices come from its event loop's hub (``realtime.hub``), so a connection
    needs no channel-layer channel, no task reading one and no Redis subscription
    (docs/adr/0013-connections-without-a-layer-channel.md). Slots: thousands are held.
    """

    __slots__ = (
        "__weakref__",
        "_base_send",
        "admitted",
        "closing",
        "conn_id",
        "connection",
        "frame_size",
        "inflight",
        "last_seen",
        "limiter",
        "members",
        "outbox",
        "presence",
        "scope",
        "streams",
        "user",
        "watched",
    )

    def __init__(self) -> None:
        self.conn_id = uuid.uuid4().hex
        self.streams: dict[str, TopicStream] = {}
        self.members: dict[str, dict] = {}
        self.last_seen = time.monotonic()
        self.closing = False
        self.inflight = 0  # frames being handled (a graceful shutdown waits for them)
        self.connection: Connection | None = None
        self.admitted = False  # counted against the process's cap (``process_capacity``)
        self.limiter: PublishLimiter | None = None  # made by the first publish
        self.watched = False  # registered with the hub for notices about its user
        self.user: Any = None
        self.frame_size = 0  # the bytes of the frame being handled (the publish budget)

    @classmethod
    def as_asgi(cls) -> Callable[[dict, Any, Any], Awaitable[None]]:
        """The ASGI application: one instance per connection."""

        def app(scope: dict, receive: Any, send: Any) -> Awaitable[None]:
            # The consumer's coroutine itself, not one awaiting it: a frame fewer held
            # for the connection's life (ADR 0035).
            return cls()(scope, receive, send)

        app.consumer_class = cls  # type: ignore[attr-defined]
        app._asgi_single_callable = True  # type: ignore[attr-defined]  # ASGI 3 (asgiref)
        # The handshake's admission (``realtime.auth.RealtimeAuthMiddleware``) runs as
        # this coroutine's first step, so that the middleware holds no frame either.
        app.runs_admission = True  # type: ignore[attr-defined]
        return app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        admission = scope.pop(ADMISSION, None)
        if admission is not None and not await admission.admit(scope, receive, send):
            return
        bind_connection(self.conn_id, scope.get("user"))  # on every log line of this connection
        self.scope = scope
        self._base_send = send
        del scope  # held by the consumer only; this frame lives as long as the connection
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message: dict) -> None:
        # Channels' consumers run close_old_connections() in a thread before every
        # handler; ours reach the database only through in_db_thread (core.db), which
        # does it itself, so no frame pays for that thread round trip (FINDINGS.md #4).
        handler = _HANDLERS.get(message["type"])
        if handler is None:
            logger.warning("no handler for message type %s", message["type"])
            return
        await handler(self, message)

    async def send(self, message: dict) -> None:
        """Send one ASGI message to the server (accept, a text frame, close)."""
        await self._base_send(message)

    # --- lifecycle ---------------------------------------------------------------------

    async def websocket_connect(self, message: dict) -> None:
        self.user = self.scope.get("user")
        cooling = None
        if self.user is not None and self.user.is_authenticated:
            # Closed for its behaviour a moment ago: the handshake waits out the cool-down
            # before it is answered (at no cost: nothing is accepted, counted or read), so a
            # reconnect loop runs at one attempt per cool-down, not as fast as it can.
            cooling = cooldowns.get(self.user.pk)
            if cooling is not None:
                await asyncio.sleep(cooldowns.remaining(self.user.pk))
        await self.send({"type": "websocket.accept"})
        # Answered: the handshake's headers and query string (the token) are not read
        # again, and the scope, shared with the server, lives as long as the connection.
        # Only a WebSocket's: the SSE stream (realtime.sse) reads its query string and
        # Last-Event-ID after this.
        scope = self.scope
        if scope.get("type") == "websocket":
            kept = {key: scope[key] for key in _KEPT_AFTER_ACCEPT if key in scope}
            scope.clear()  # frees the dict's table too: popping keys would not shrink it
            scope.update(kept)
        metrics.connection_opened()
        self.outbox = Outbox(
            self._send_text,
            maxsize=settings.REALTIME_OUTBOX_SIZE,
            put_timeout=settings.REALTIME_OUTBOX_PUT_TIMEOUT,
        )
        if process.draining:
            await self.close(CLOSE_RESTARTING, "server restarting; reconnect")
            return
        if self.user is None or not self.user.is_authenticated:
            await self.close(CLOSE_UNAUTHENTICATED, "authentication required")
            return
        if cooling is not None:
            await self.close(cooling, "too soon after being closed; retry later")
            return
        if not await self._register():
            return
        self.presence = get_presence_store()
        self.watched = True
        node = get_node()
        await node.hub.watch_user(self.user.pk, self)
        node.consumers.add(self)

    async def _register(self) -> bool:
        """Count this connection against its user's and suppliers' limits (4029 if over)."""
        try:
            suppliers, wedding_day = await connect_facts(self.user.pk)
        except DatabaseError:
            suppliers, wedding_day = (), False  # counted per user only until the next connect
        if not await self._admit_to_process(suppliers):
            return False
        connection = Connection(self.conn_id, self.user.pk, suppliers)
        refusal = await get_connection_counter().register(
            connection, supplier_limit=supplier_limit(wedding_day)
        )
        if refusal is not None:
            self._release_from_process()
            logger.info("connection refused (4029): %s", refusal.reason)
            cooldowns.start(self.user.pk, CLOSE_CONNECTION_LIMIT)
            await self.close(CLOSE_CONNECTION_LIMIT, refusal.reason)
            return False
        self.connection = connection
        return True

    async def _admit_to_process(self, suppliers: tuple[int, ...]) -> bool:
        """The process's connection cap, by vendor category near it (4029 if refused)."""
        rank = 0
        if process_capacity.needs_rank():
            try:
                rank = await in_db_thread(supplier_rank)(self.user, suppliers)
            except DatabaseError:
                rank = 10**6  # unknown: the first refused
        reason = process_capacity.admit(rank)
        if reason is not None:
            logger.info("connection refused (4029): %s", reason)
            await self.close(CLOSE_CONNECTION_LIMIT, reason)
            return False
        self.admitted = True
        return True

    def _release_from_process(self) -> None:
        if self.admitted:
            self.admitted = False
            process_capacity.release()

    async def websocket_disconnect(self, message: dict) -> None:
        metrics.connection_closed(message.get("code"))
        node = get_node()
        node.consumers.discard(self)
        if self.watched:
            node.hub.unwatch_user(self.user.pk, self)
        outbox = getattr(self, "outbox", None)
        if outbox is not None:
            outbox.stop()
        self._release_from_process()
        if self.connection is not None:
            # Every count of the connection, its weddings included: the topics dropped
            # below need no untracking of their own.
            connection, self.connection = self.connection, None
            await get_connection_counter().unregister(connection)
        for topic in list(self.streams):
            await self._drop_topic(topic)
        raise StopConsumer

    async def close(self, code: int, reason: str = "") -> None:
        """Close the socket once, after the frames already queued for it."""
        if self.closing:
            return
        self.closing = True
        if code != CLOSE_OVERLOADED:  # a client too slow to drain gets no more frames
            await self.outbox.drain()
        await self.send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    def _send_text(self, text: str) -> Awaitable[None]:
        # The server's own send, without a coroutine of ours around it: the outbox awaits
        # this once per frame delivered.
        return self._base_send({"type": "websocket.send", "text": text})

    # --- frames from the client ---------------------------------------------------------

    async def websocket_receive(self, message: dict) -> None:
        if self.closing:
            return
        self.last_seen = time.monotonic()
        self.inflight += 1
        try:
            await self._receive(message)
        finally:
            self.inflight -= 1

    async def _receive(self, message: dict) -> None:
        text, data = message.get("text"), message.get("bytes")
        self.frame_size = len(text) if text is not None else len(data or b"")
        try:
            frame = protocol.decode_frame(
                text if text is not None else data, is_binary=text is None
            )
        except RealtimeError as err:
            metrics.frame_in("invalid")
            metrics.error(err.code)
            ref = err.extra.pop("ref", None)
            reply = protocol.error_frame(err) if ref is None else protocol.reply_error(ref, err)
            await self._reply(reply)
            if err.code == "too_large":
                await self.close(CLOSE_TOO_LARGE, "frame too large")
            return
        metrics.frame_in(type(frame).__name__)
        try:
            await self._handle(frame)
        except RealtimeError as err:
            metrics.error(err.code)
            await self._reply(protocol.reply_error(frame.ref, err))
            if err.code == "rate_limited" and self.limiter and self.limiter.should_close:
                cooldowns.start(self.user.pk, CLOSE_POLICY)
                await self.close(CLOSE_POLICY, "rate limit exceeded repeatedly")
        except OutboxFull:
            await self.close(CLOSE_OVERLOADED, "client too slow")
        except DatabaseError:
            metrics.error("unavailable")
            # Nothing was stored: the transaction rolled back. The client retries.
            logger.warning("frame %s failed: database unreachable", type(frame).__name__)
            await self._reply(protocol.reply_error(frame.ref, _database_unavailable()))
        except Exception:
            metrics.error("unavailable")
            logger.exception("frame %s failed", type(frame).__name__)
            err = RealtimeError("unavailable", "the server could not handle this frame")
            await self._reply(protocol.reply_error(frame.ref, err))

    async def _reply(self, text: str) -> None:
        try:
            await self.outbox.put(text)
        except OutboxFull:
            await self.close(CLOSE_OVERLOADED, "client too slow")

    async def _handle(self, frame: Any) -> None:
        self._limiter().check_any(self.user.pk)  # every frame, before it costs anything else
        if isinstance(frame, protocol.Ping):
            await self._reply(protocol.pong(frame.ref))
            return
        # The rest costs work: at most REALTIME_USER_CONCURRENT_FRAMES of the user's at once
        # in this process, whatever their number of connections (``UserSlots``).
        async with user_slots().hold(self.user.pk):
            rest = await self._handle_costly(frame)
        if rest is not None:
            # A subscribe's replay and presence, after the slot: written as fast as the
            # client reads, a slow phone's replay never holds up the user's other frames.
            await rest()

    async def _handle_costly(self, frame: Any) -> Callable[[], Awaitable[None]] | None:
        """Handle a frame that costs work; what is left to do outside the user's slot."""
        match frame:
            case protocol.Subscribe():
                return await self._subscribe(frame)
            case protocol.Unsubscribe():
                for topic in frame.topics:
                    await self._drop_topic(topic)
                await self._reply(protocol.reply_ok(frame.ref, topics=list(frame.topics)))
            case protocol.Publish():
                await self._limiter().acheck(frame.event, self.user.pk, size=self.frame_size)
                if process.draining:
                    raise RealtimeError(
                        "unavailable", "server restarting; send it again after reconnecting"
                    )
                # Emergencies and timeline changes first in the database threads (ADR 0031).
                result = await in_db_thread(
                    services.event_publish, priority=publish_priority(frame.event)
                )(
                    topic=frame.topic,
                    event=frame.event,
                    payload=frame.payload,
                    user=self.user,
                    idempotency_key=frame.idempotency_key,
                )
                fields: dict[str, Any] = {"topic": frame.topic, "seq": result.event.seq}
                if not result.created:
                    fields["duplicate"] = True
                await self._reply(protocol.reply_ok(frame.ref, **fields))
            case protocol.Presence():
                await self._limiter().acheck_frame("presence", self.user.pk)
                if frame.topic not in self.streams:
                    await in_db_thread(authorize_topics)(self.user, [frame.topic])
                members = await self.presence.members(frame.topic)
                await self._reply(protocol.reply_ok(frame.ref, topic=frame.topic, members=members))
            case protocol.Ack():
                await self._limiter().acheck_frame("ack", self.user.pk)
                result = await in_db_thread(services.ack_record)(
                    user=self.user, topic=frame.topic, seq=frame.seq
                )
                await self._reply(protocol.reply_ok(frame.ref, topic=frame.topic, seq=result.seq))

    def _limiter(self) -> PublishLimiter:
        """The connection's limiter (its strikes), made by the first limited frame."""
        if self.limiter is None:
            self.limiter = PublishLimiter()
        return self.limiter

    async def _subscribe(self, frame: protocol.Subscribe) -> Callable[[], Awaitable[None]] | None:
        """Check, open and answer a subscribe; returns the sending of its replay and the
        presence joins, which the caller runs once the user's slot is free (``_handle``)."""
        requested = dict(frame.topics)
        node = get_node()
        # The stream epoch (v1.1), from the cache, read before this frame opens streams: a
        # new one closes the node's connections subscribed under the old one (``epoch``).
        epoch = await observe(node)
        statuses, fresh = self._admit(requested, epoch)
        # The user's budgets (PROTOCOL §8): a token per topic added, before any access check.
        await self._limiter().acheck_frame("subscribe", self.user.pk, len(fresh))
        # One database-thread call for the check and the presence cards, one for the
        # positions and the first page of the replay: a reconnect storm multiplies them.
        allowed, refused, infos, plan_only = await in_db_thread(authorize_and_describe)(
            self.user, fresh
        )
        for topic, err in refused.items():
            statuses[topic] = protocol.topic_refused(err)
        hub = node.hub
        await self._open_streams(hub, allowed, plan_only)
        since = {t: requested[t].since for t in allowed}
        epochs = {t: requested[t].epoch for t in allowed}
        bound = replay_bound(hub, since, epochs, epoch)  # None: not known to the hub
        if any(after is not None for after in since.values()) and not await get_user_limits().holds(
            "replay", self.user.pk, _FULL if bound is None else bound
        ):
            # A replay budget that cannot pay for the replays is refused before the log
            # is read (a flood of replays costs no page read). Asked of the log (a few
            # index lookups) only when the budget does not hold what the hub says the
            # replays can cost at most: a reconnect costs no extra query. What the replay
            # costs is taken once the pages are read.
            with db_priority(BACKGROUND):
                need = await replay_need(hub, since, epochs, epoch)
            await self._check_replay(since, None, need)
        syncs = await plan_syncs(hub, since, epochs, epoch)
        cost = sum(s.seq - s.start for t, s in syncs.items() if since[t] is not None)
        await self._check_replay(since, cost)
        self._start_streams(since, syncs, statuses, epoch)
        if not still_current(node, epoch):  # bumped meanwhile: resume (and reload) instead
            await self.close(CLOSE_RESTARTING, CLOSE_EPOCH_CHANGED)
            return
        await self._reply(protocol.subscribe_reply(frame.ref, statuses))

        async def rest() -> None:
            with db_priority(BACKGROUND):  # replays after live work (ADR 0031)
                for topic in allowed:
                    stream = self.streams.get(topic)
                    if stream is not None:
                        await send_replay(stream, self.outbox, syncs[topic])
            for topic in allowed:
                if topic in self.streams:
                    await self._join_presence(topic, infos[topic])

        return rest

    async def _check_replay(
        self, since: dict[str, int | None], cost: int | None, need: int = 1
    ) -> None:
        """``cost`` tokens of the user's replay budget (one per event the subscribe
        replays; None: only whether it holds ``need``); over it, the frame's new topics
        are dropped again and the frame is refused."""
        try:
            if cost is None:
                await self._limiter().acheck_spent("replay", self.user.pk, need)
            else:
                await self._limiter().acheck_frame("replay", self.user.pk, cost)
        except RealtimeError:
            for topic in since:
                await self._drop_topic(topic)
            raise

    def _admit(self, requested: dict[str, Any], epoch: str) -> tuple[dict[str, dict], list[str]]:
        """The topics of a subscribe already subscribed (ok, at their seq, in ``epoch``)
        or beyond the per-connection limit (limit_reached), and the new ones within it."""
        limit = settings.REALTIME_MAX_TOPICS_PER_CONNECTION
        room = limit - len(self.streams)
        statuses: dict[str, dict] = {}
        fresh: list[str] = []
        for topic in requested:
            if topic in self.streams:
                statuses[topic] = protocol.topic_ok(self.streams[topic].last_seq, epoch=epoch)
            elif room > 0:
                fresh.append(topic)
                room -= 1
            else:
                statuses[topic] = protocol.topic_limit_reached(limit)
        return statuses, fresh

    async def _open_streams(
        self, hub: TopicHub, topics: list[str], plan_only: set[str] = frozenset()
    ) -> None:
        # Join the groups first, then read the log: an event stored in between arrives
        # both ways and the duplicate is dropped; none can fall between the two.
        for topic in topics:
            self.streams[topic] = TopicStream(topic, plan_only=topic in plan_only)
            await hub.join(topic, self)
        if self.connection is not None:
            await get_connection_counter().track_weddings(self.connection, _wedding_ids(topics))

    def _start_streams(
        self,
        since: dict[str, int | None],
        syncs: dict[str, Sync],
        statuses: dict[str, dict],
        epoch: str,
    ) -> None:
        """Start each new stream where its sync says; the reply tells its seq and the
        epoch it counts in (and with ``since`` whether everything after it is replayed)."""
        for topic, after in since.items():
            sync = syncs[topic]
            self.streams[topic].last_seq = sync.start
            if after is None:
                statuses[topic] = protocol.topic_ok(sync.seq, epoch=epoch)
                continue
            statuses[topic] = protocol.topic_ok(sync.seq, sync.recovered, epoch)
            metrics.replayed(recovered=sync.recovered, events=max(0, sync.seq - sync.start))

    async def _drop_topic(self, topic: str) -> None:
        if self.streams.pop(topic, None) is None:
            return
        await get_node().hub.leave(topic, self)
        if self.connection is not None:
            await get_connection_counter().untrack_weddings(self.connection, _wedding_ids([topic]))
        member = self.members.pop(topic, None)
        if member is None:
            return
        try:
            left = await self.presence.leave(topic, self.conn_id)
        except RealtimeError:
            return
        if left:
            self._presence_diff(topic, [], [left])

    # --- presence -----------------------------------------------------------------------

    async def _join_presence(self, topic: str, member: dict[str, Any]) -> None:
        self.members[topic] = member
        try:
            joined = await self.presence.join(topic, self.conn_id, member)
        except RealtimeError:
            logger.warning("presence unavailable; %s not announced on %s", self.conn_id, topic)
            return
        if joined:
            self._presence_diff(topic, [member], [])

    async def rejoin_presence(self, lost: list[str]) -> None:
        """Join again the topics whose presence entry was lost (the sweep found them)."""
        try:
            for topic in lost:
                if topic in self.members and await self.presence.join(
                    topic, self.conn_id, self.members[topic]
                ):
                    self._presence_diff(topic, [self.members[topic]], [])
        except RealtimeError:
            logger.warning("presence unavailable; %s not re-joined", self.conn_id)

    def _presence_diff(self, topic: str, joins: list, leaves: list) -> None:
        get_node().diffs.add(topic, joins, leaves)  # sent merged, within PRESENCE_BATCH_S

    # --- events from this event loop's hub (realtime.hub) -------------------------------

    def hub_event(self, topic: str, seq: int, text: str, stored_at: float | None = None) -> None:
        """One live event of a subscribed topic, in the order the hub received them.

        The common case (the next seq) is a put into the outbox, no await: the hub hands
        an event to every local subscriber in one pass. A gap or a resync goes through
        ``delivery`` in a task, with later events held in ``pending`` meanwhile.
        """
        stream = self.streams.get(topic)
        if stream is None or self.closing:
            return
        if stream.syncing:
            stream.pending[seq] = text
            return
        if seq <= stream.last_seq:
            return
        outbox = self.outbox
        # Under congestion (ADR 0031): critical events go before other topics' frames, and
        # ordinary ones are shed: the topic waits in the log until the outbox has room.
        critical = outbox.depth > 0 and frame_is_critical(text)
        if stream.shed:
            if not critical and not outbox.has_room():
                if seq - stream.last_seq > outbox.maxsize:  # an outbox's worth behind:
                    get_node().hub.spawn(self.close(CLOSE_OVERLOADED, "client too slow"))
                return  # still shed; a later event or the sweep fills it from the log
            stream.shed = False  # the gap path below fills it from the log first
        elif seq == stream.last_seq + 1 and not critical and outbox.sheds_ordinary():
            stream.shed = True
            shed_counts["event"] += 1
            return
        if seq == stream.last_seq + 1:
            try:
                outbox.put_event(topic, stream.view(text), stored_at, critical=critical)
            except OutboxFull:
                get_node().hub.spawn(self.close(CLOSE_OVERLOADED, "client too slow"))
                return
            metrics.delivered()
            stream.last_seq = seq
            return
        stream.syncing = True  # a gap: fill it from the log, then the held events
        stream.pending[seq] = text
        get_node().hub.spawn(self._refill(stream, seq - 1))

    async def _refill(self, stream: TopicStream, upto: int) -> None:
        try:
            await fill(stream, self.outbox, upto, live=True)
            get_node().hub.saw(stream.topic, stream.last_seq)
            await finish_sync(stream, self.outbox)
        except OutboxFull:
            await self.close(CLOSE_OVERLOADED, "client too slow")
        except Exception:
            # The database failed mid-fill: the sweep's catch-up retries from last_seq.
            logger.warning("gap fill of %s failed; the sweep retries", stream.topic)
            stream.pending.clear()
            stream.syncing = False

    def hub_presence(self, topic: str, text: str) -> None:
        # Presence diffs are the one thing that may be shed under load (PROTOCOL §7).
        if topic in self.streams and not self.closing:
            try:
                if not self.outbox.put_presence(text):
                    shed_counts["presence"] += 1
            except OutboxFull:
                pass

    # --- messages from the channel layer ------------------------------------------------

    async def rt_recheck(self, message: dict) -> None:
        """A booking or membership changed: drop the topic if this user lost access."""
        topic = message["topic"]
        stream = self.streams.get(topic)
        if stream is None or self.closing:
            return
        full_view = not stream.plan_only
        if await in_db_thread(still_allowed)(self.user.pk, topic, full_view=full_view):
            return
        await self.withdraw([topic])

    def full_view(self) -> frozenset[str]:
        """The wedding topics this connection reads in full (not the run sheet only)."""
        return frozenset(
            topic
            for topic, stream in self.streams.items()
            if not stream.plan_only and topic.startswith("wedding:")
        )

    async def withdraw(self, topics: list[str]) -> None:
        """End subscriptions whose access was withdrawn: ``unsubscribed`` (forbidden)."""
        for topic in topics:
            if topic not in self.streams or self.closing:
                continue
            await self._drop_topic(topic)
            await self._reply(
                protocol.unsubscribed(topic, "forbidden", "access to this topic was withdrawn")
            )

    async def rt_user_revoked(self, message: dict) -> None:
        """The user was deactivated (or their credentials withdrawn): close 4001."""
        await self.close(CLOSE_UNAUTHENTICATED, "credentials withdrawn")

    async def rt_catch_up(self, message: dict) -> None:
        """Deliver what the log holds beyond what was sent (after a lost layer message)."""
        stream = self.streams.get(message["topic"])
        if stream is None or stream.syncing or self.closing:
            return
        if message["seq"] > stream.last_seq:
            try:
                await fill(stream, self.outbox, message["seq"], live=True)
                get_node().hub.saw(stream.topic, stream.last_seq)
            except OutboxFull:
                await self.close(CLOSE_OVERLOADED, "client too slow")


class Cooldowns:
    """Users closed with 4008 (rate limits ignored) or refused with 4029 (too many
    connections) a moment ago, per process: a new connection of theirs within
    ``REALTIME_RECONNECT_COOLDOWN`` seconds has its handshake held until the cool-down
    ends, then is closed with the same code, before it costs a registration in Redis or
    a frame. A client that backs off as PROTOCOL §8 asks never meets it; one that
    reconnects in a loop is slowed to one attempt per cool-down."""

    def __init__(self) -> None:
        self._until: dict[int, tuple[float, int]] = {}

    def start(self, user_id: int, code: int) -> None:
        seconds = settings.REALTIME_RECONNECT_COOLDOWN
        if seconds > 0:
            if len(self._until) > 10_000:  # forget the ones that ran out
                now = time.monotonic()
                self._until = {k: v for k, v in self._until.items() if v[0] > now}
            self._until[user_id] = (time.monotonic() + seconds, code)

    def remaining(self, user_id: int) -> float:
        """Seconds left of a user's cool-down (0 when none)."""
        entry = self._until.get(user_id)
        return max(0.0, entry[0] - time.monotonic()) if entry is not None else 0.0

    def get(self, user_id: int) -> int | None:
        """The close code of a user still cooling down, else None."""
        entry = self._until.get(user_id)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._until[user_id]
            return None
        return entry[1]


cooldowns = Cooldowns()


_HANDLERS: dict[str, Callable[[RealtimeConsumer, dict], Awaitable[None]]] = {
    "websocket.connect": RealtimeConsumer.websocket_connect,
    "websocket.receive": RealtimeConsumer.websocket_receive,
    "websocket.disconnect": RealtimeConsumer.websocket_disconnect,
}
