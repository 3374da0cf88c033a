"""Asyncio client for the realtime protocol (PROTOCOL.md v1, with v1.1's stream epoch),
used by the load benchmark, the tests and integrations: the connection, its reconnects,
and request/reply.

One WebSocket multiplexes topics; replies are matched to requests by ``ref``. Each
subscribed topic's events reach ``on_event`` exactly once and in ``seq`` order, across
reconnects: a reconnect re-subscribes every topic with ``since`` = the last delivered
seq, and the stream epoch that seq counts in. A server whose history is another one
(restored since: another epoch) answers ``recovered: false``, and the client takes the
reset path (``on_reset``) instead of merging the two. The ordering and gap buffering per
topic are ``streams``', the retry delays ``backoff``'s. Semantics and an example:
docs/client.md. The receive path is lean on purpose (orjson, no per-message task or log
line): the benchmark runs thousands of these.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from wedsync_client.backoff import full_jitter, reconnect_delay
from wedsync_client.errors import ClientError, ConnectionLost, RequestTimeout, closed_error
from wedsync_client.streams import GAP_TIMEOUT, TopicStreams
from wedsync_client.wire import CLOSE_UNAUTHENTICATED, MAX_FRAME_BYTES, MAX_TOPICS_PER_FRAME

__all__ = ["ClientError", "ConnectionLost", "RealtimeClient", "RequestTimeout"]

logger = logging.getLogger(__name__)

Callback = Callable[..., Awaitable[Any] | Any]
ReplyHandler = Callable[[dict], Awaitable[None]]

# The server closes a connection silent for 60 s (4000); ping well before, so one lost
# ping still leaves time for the next.
KEEPALIVE_INTERVAL = 25.0
TERMINAL_STATES = frozenset({"closed", "unauthorized"})


class RealtimeClient:
    """One realtime connection with request/reply, ordered delivery and reconnects."""

    def __init__(
        self,
        url: str | list[str],
        *,
        token: str | None = None,
        on_event: Callback | None = None,
        on_presence: Callback | None = None,
        on_state: Callback | None = None,
        on_reset: Callback | None = None,
        on_topic_error: Callback | None = None,
        reconnect: bool = True,
        backoff_initial: float = 0.5,
        backoff_max: float = 15.0,
        request_timeout: float = 10.0,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        gap_timeout: float = GAP_TIMEOUT,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        # Several URLs (server processes behind no balancer): reconnects go round them,
        # so a client of a dead or restarting process moves to the next one.
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("RealtimeClient needs at least one URL")
        self.url, self.extra_headers = self.urls[0], extra_headers
        self.token = token  # may be replaced (a fresh token) before connect() after a 4001
        self.on_event, self.on_presence, self.on_state = on_event, on_presence, on_state
        self.on_reset, self.on_topic_error = on_reset, on_topic_error
        self.reconnect = reconnect
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.request_timeout, self.keepalive_interval = request_timeout, keepalive_interval
        self.state = "closed"
        self.error: ClientError | None = None  # why the client stopped, if it did
        self._ws: ClientConnection | None = None
        self._live = asyncio.Event()  # set when requests may go out (or state is terminal)
        self._streams = TopicStreams(self._emit, self._resync, gap_timeout)
        self._pending: dict[str, tuple[asyncio.Future, ReplyHandler | None]] = {}
        self._refs = itertools.count(1)
        self._runner: asyncio.Task | None = None
        self._resync_task: asyncio.Task | None = None
        self._closing = False
        self._attempt = 0
        self._last_send = 0.0

    # --- public API -------------------------------------------------------------------

    @property
    def gap_timeout(self) -> float:
        """Seconds an event beyond a gap waits for the missing ones before a resync."""
        return self._streams.gap_timeout

    @gap_timeout.setter
    def gap_timeout(self, value: float) -> None:
        self._streams.gap_timeout = value

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection; raises if this first handshake fails (no retry)."""
        if self._runner is not None and not self._runner.done():
            return
        self._closing, self.error = False, None
        self._live.clear()
        await self._set_state("connecting")
        try:
            ws = await self._open()
        except BaseException:
            await self._set_state("closed")
            raise
        self._ws = ws
        resume = bool(self._streams.last)  # connect() again after a 4001 with a fresh token
        if not resume:
            self._live.set()
            await self._set_state("live")
        self._runner = asyncio.get_running_loop().create_task(self._supervise(ws, resume))

    async def close(self) -> None:
        """Close normally (1000) and stop reconnecting; pending requests fail."""
        self._closing = True
        ws, runner, current = self._ws, self._runner, asyncio.current_task()
        if ws is not None:
            await ws.close()
        if runner is not None and runner is not current:
            if ws is None:
                runner.cancel()  # sleeping in a back-off or mid-handshake
            await asyncio.gather(runner, return_exceptions=True)
        if self._resync_task is not None and self._resync_task is not current:
            await asyncio.gather(self._resync_task, return_exceptions=True)
        await self._finish("unauthorized" if self.state == "unauthorized" else "closed")

    async def subscribe(
        self,
        *topics: str,
        since: dict[str, int] | None = None,
        epochs: dict[str, str] | None = None,
    ) -> dict:
        """Subscribe; returns ``{topic: status}``. Only topics with status ok are tracked.

        ``since`` (e.g. a snapshot's ``seq``) goes with the epoch from ``epochs`` (the
        snapshot's ``epoch``); a topic tracked already resumes from its own position."""
        since, epochs = since or {}, epochs or {}
        names = list(dict.fromkeys(topics))  # the server refuses an empty topics map
        result: dict[str, dict] = {}
        for i in range(0, len(names), MAX_TOPICS_PER_FRAME):
            chunk: dict[str, tuple[int | None, str | None]] = {}
            for t in names[i : i + MAX_TOPICS_PER_FRAME]:
                if t in since:
                    chunk[t] = (since[t], epochs.get(t))
                else:
                    chunk[t] = (self._streams.last.get(t), self._streams.epochs.get(t))
            result.update(await self._subscribe_frame(chunk, resumed=False))
        return result

    async def unsubscribe(self, *topics: str) -> None:
        """Stop tracking ``topics`` at once and tell the server."""
        for topic in topics:
            self._streams.forget(topic)
        for i in range(0, len(topics), MAX_TOPICS_PER_FRAME):
            chunk = list(topics[i : i + MAX_TOPICS_PER_FRAME])
            await self._request({"type": "unsubscribe", "topics": chunk})

    async def presence(self, topic: str) -> list[dict]:
        """The users present on ``topic`` now."""
        reply = await self._request({"type": "presence", "topic": topic})
        return list(reply.get("members") or [])

    async def ack(self, topic: str, seq: int) -> None:
        """Confirm the user has seen event ``seq`` (for ``ack_required`` events)."""
        await self._request({"type": "ack", "topic": topic, "seq": seq})

    async def ping(self) -> float:
        """One ping/pong round trip, in seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self._request({"type": "ping"})
        return loop.time() - start

    async def publish(
        self,
        topic: str,
        event: str,
        payload: dict,
        *,
        idempotency_key: str | None = None,
        retries: int = 3,
    ) -> int:
        """Publish and return the event's seq; retries keep the same idempotency key."""
        key = idempotency_key or uuid.uuid4().hex
        for attempt in range(retries + 1):
            frame = {"type": "publish", "topic": topic, "event": event, "payload": payload}
            frame["idempotency_key"] = key
            try:
                # A retry may have to wait out a reconnect back-off before it is sent.
                wait = self.backoff_max + self.request_timeout
                reply = await self._request(frame, live_timeout=wait)
                return int(reply["seq"])
            except ConnectionLost:
                if attempt == retries or not self.reconnect or self.state in TERMINAL_STATES:
                    raise
            except ClientError as exc:
                if exc.code != "unavailable" or attempt == retries:
                    raise
                await asyncio.sleep(
                    full_jitter(attempt + 1, self.backoff_initial, self.backoff_max)
                )
        raise AssertionError("unreachable")

    def last_seq(self, topic: str) -> int | None:
        """The last seq delivered (or skipped by a reset) on ``topic``; None if untracked."""
        return self._streams.last.get(topic)

    def epoch(self, topic: str) -> str | None:
        """The stream epoch ``last_seq(topic)`` counts in (v1.1), as the server said it;
        None if untracked or the server names none. It changes only through a reset."""
        return self._streams.epochs.get(topic)

    @property
    def topics(self) -> list[str]:
        """The topics tracked, and re-subscribed on reconnect."""
        return list(self._streams.last)

    async def wait_for_seq(self, topic: str, seq: int, timeout: float = 10.0) -> None:
        """Return once ``last_seq(topic) >= seq``; raises RequestTimeout after ``timeout``."""
        await self._streams.wait_for(topic, seq, timeout)

    # --- connection lifecycle -----------------------------------------------------------

    async def _open(self) -> ClientConnection:
        url = self.url
        if self.token:
            url += ("&" if "?" in url else "?") + "token=" + quote(self.token, safe="")
        # No permessage-deflate: frames are small and it costs CPU on both ends per frame.
        # No protocol-level pings: the application ping below also keeps the server's
        # 60 s idle timer alive, which protocol pings do not.
        ws = await connect(
            url, additional_headers=self.extra_headers, compression=None,
            ping_interval=None, open_timeout=self.request_timeout, close_timeout=5,
        )  # fmt: skip
        self._last_send = asyncio.get_running_loop().time()
        return ws

    async def _supervise(self, ws: ClientConnection, resume: bool) -> None:
        """Read one connection after another until closed, unauthorized or not reconnecting."""
        loop = asyncio.get_running_loop()
        while True:
            self._ws = ws
            helpers = [loop.create_task(self._keepalive(ws))]
            if resume:
                helpers.append(loop.create_task(self._resume(ws)))
            try:
                await self._read(ws)
            finally:
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                self._connection_lost(ws)
                if ws.close_code is None:  # cancelled while reading: do not leak the socket
                    await ws.close()
            code = ws.close_code
            if self._closing:
                return
            if code == CLOSE_UNAUTHENTICATED:
                self.error = _lost(ws)
                await self._finish("unauthorized")
                return
            if not self.reconnect:
                self.error = ConnectionLost("connection_lost", f"closed with code {code}")
                await self._finish("closed")
                return
            await self._set_state("reconnecting")
            while True:
                await asyncio.sleep(
                    reconnect_delay(code, self._attempt, self.backoff_initial, self.backoff_max)
                )
                self._attempt += 1
                self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
                try:
                    ws = await self._open()
                    break
                except Exception as exc:  # refused, reset, handshake error, timeout
                    logger.info("reconnect to %s failed: %s", self.url, exc)
                    code = None
            resume = True

    async def _resume(self, ws: ClientConnection) -> None:
        """After a reconnect: re-subscribe every tracked topic with since (and its epoch),
        then go live."""
        epochs = self._streams.epochs
        items = [(t, (seq, epochs.get(t))) for t, seq in self._streams.last.items()]
        for i in range(0, len(items), MAX_TOPICS_PER_FRAME):
            try:
                await self._subscribe_frame(dict(items[i : i + MAX_TOPICS_PER_FRAME]), resumed=True)
            except ConnectionLost:
                return
            except ClientError as exc:
                if "topics" in exc.reply:  # every topic of the chunk refused: forgotten
                    continue
                logger.warning("re-subscribe failed (%s); reconnecting", exc)
                await ws.close()
                return
        self._attempt = 0
        self._live.set()
        await self._set_state("live")

    def _connection_lost(self, ws: ClientConnection) -> None:
        self._live.clear()
        if self._ws is ws:
            self._ws = None
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(_lost(ws))
        self._pending.clear()
        self._streams.clear_gaps()  # held events come back in the replay

    async def _finish(self, state: str) -> None:
        self._live.set()  # wake requests waiting for a connection; they see the state
        self._streams.fail_waiters(self.error or ConnectionLost("closed", "client closed"))
        await self._set_state(state)

    async def _keepalive(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            idle = loop.time() - self._last_send
            if idle < self.keepalive_interval:
                await asyncio.sleep(self.keepalive_interval - idle)
                continue
            try:
                await self._request({"type": "ping"}, gated=False)
            except RequestTimeout:
                logger.warning("no pong from %s; reconnecting", self.url)
                await ws.close()
                return
            except ClientError:
                return

    def _resync(self, topic: str) -> None:
        """A gap did not fill: reconnect, so the re-subscribe replays from last_seq."""
        ws = self._ws
        if ws is None or (self._resync_task is not None and not self._resync_task.done()):
            return
        last = self._streams.last.get(topic)
        logger.warning("gap on %s after seq %s; resynchronising", topic, last)
        self._resync_task = asyncio.get_running_loop().create_task(ws.close(1000, "resync"))

    # --- requests -----------------------------------------------------------------------

    async def _request(
        self, frame: dict, handler: ReplyHandler | None = None, *, gated: bool = True,
        live_timeout: float | None = None,
    ) -> dict:  # fmt: skip
        """Send ``frame`` with a fresh ref and return the ok reply; raise ClientError."""
        if asyncio.current_task() is self._runner:  # the reply would wait for this very task
            raise ClientError("reentrant", "a callback cannot await a request; start a task")
        if gated and not self._live.is_set():
            try:
                async with asyncio.timeout(live_timeout or self.request_timeout):
                    await self._live.wait()
            except TimeoutError:
                raise RequestTimeout("timeout", "not connected") from None
        ws = self._ws
        if ws is None or self.state in TERMINAL_STATES:
            raise self.error or ConnectionLost("closed", "not connected")
        ref = str(next(self._refs))
        frame["ref"] = ref
        data = orjson.dumps(frame)
        if len(data) > MAX_FRAME_BYTES:  # the server would close the socket (4009)
            raise ClientError("too_large", f"frame of {len(data)} bytes > {MAX_FRAME_BYTES}")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending[ref] = (fut, handler)
        try:
            self._last_send = loop.time()
            await ws.send(data, text=True)
            async with asyncio.timeout(self.request_timeout):
                reply = await fut
        except ConnectionClosed:
            raise _lost(ws) from None
        except TimeoutError:
            raise RequestTimeout("timeout", f"no reply to {frame['type']}") from None
        finally:
            self._pending.pop(ref, None)
        if reply.get("type") == "error" or reply.get("status") == "error":
            raise ClientError(str(reply.get("code")), str(reply.get("message", "")), reply)
        return reply

    async def _subscribe_frame(
        self, asked: dict[str, tuple[int | None, str | None]], *, resumed: bool
    ) -> dict:
        """One subscribe frame: per topic ``(since, epoch)``; the epoch goes only with a
        since, and only when known (a v1 server names none: the frame stays v1)."""
        topics: dict[str, dict] = {}
        for t, (since, epoch) in asked.items():
            topics[t] = {} if since is None else {"since": since}
            if since is not None and epoch:
                topics[t]["epoch"] = epoch

        async def apply(reply: dict) -> None:
            await self._apply_subscribe(asked, reply, resumed)

        reply = await self._request(
            {"type": "subscribe", "topics": topics}, apply, gated=not resumed
        )
        return reply.get("topics") or {}

    async def _apply_subscribe(
        self, asked: dict[str, tuple[int | None, str | None]], reply: dict, resumed: bool
    ) -> None:
        """Runs in the reader before any later frame, so a replay never precedes it."""
        for topic, status in (reply.get("topics") or {}).items():
            if topic not in asked:
                continue
            if status.get("status", "ok") != "ok":
                self._streams.forget(topic)
                if resumed:
                    await self._call(self.on_topic_error, topic, status)
                continue
            seq = int(status.get("seq", 0))
            since, told = asked[topic]
            epoch = status.get("epoch")
            streams = self._streams
            # A replay never joins two histories: the server says recovered false for a
            # since of another epoch, and a reply naming another epoch than the one sent
            # is not trusted either.
            same_history = not (told and epoch and told != epoch)
            streams.set_epoch(topic, epoch)
            if since is None:
                streams.set_last(topic, seq)
            elif status.get("recovered", True) and since <= seq and same_history:
                streams.set_last(topic, max(since, streams.last.get(topic, since)))
            else:  # history no longer covers since (another epoch, pruned, or ahead)
                await self._reset(topic, seq)
            await streams.drain(topic)  # events held while the reply was on its way

    async def _reset(self, topic: str, seq: int) -> None:
        """``on_reset``: the app reloads its snapshot and returns its ``seq`` (an int) or
        the snapshot itself (a dict with ``seq`` and ``epoch``); delivery goes on after
        the later of that seq and the server's."""
        streams = self._streams
        streams.set_last(topic, seq)
        snapshot = await self._call(self.on_reset, topic, seq)
        if isinstance(snapshot, dict):
            if isinstance(snapshot.get("epoch"), str):
                streams.set_epoch(topic, snapshot["epoch"])
            snapshot = snapshot.get("seq")
        if type(snapshot) is int and snapshot > seq:
            streams.set_last(topic, snapshot)

    # --- receiving ----------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        receive, pending, loads = self._streams.receive, self._pending, orjson.loads
        try:
            while True:
                raw = await ws.recv(decode=False)
                try:
                    frame = loads(raw)
                    kind = frame.get("type")
                    if kind == "event":
                        await receive(frame)
                    else:
                        await self._dispatch(frame, kind, pending)
                except Exception:  # a malformed frame must not stop the reader
                    logger.exception("frame not handled: %r", raw[:200])
        except ConnectionClosed:
            return

    async def _dispatch(self, frame: dict, kind: Any, pending: dict) -> None:
        """Every frame but events (``TopicStreams.receive`` has those)."""
        if kind == "reply" or kind == "pong" or kind == "error":
            entry = pending.pop(frame.get("ref"), None)
            if entry is None:
                if kind == "error":
                    logger.warning("server error: %s", frame)
                return
            fut, handler = entry
            try:
                if handler is not None:
                    await handler(frame)
            finally:
                if not fut.done():
                    fut.set_result(frame)
        elif kind == "presence_diff":
            await self._call(self.on_presence, frame)
        elif kind == "unsubscribed":  # the server withdrew access to a topic
            self._streams.forget(frame.get("topic"))
            await self._call(self.on_topic_error, frame.get("topic"), frame)

    async def _emit(self, frame: dict) -> None:
        """An event, in order and once (``TopicStreams``), to the application."""
        if self.on_event is not None:
            await self._call(self.on_event, frame)

    # --- small helpers ------------------------------------------------------------------

    async def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            await self._call(self.on_state, state)

    async def _call(self, callback: Callback | None, *args: Any) -> Any:
        if callback is None:
            return None
        try:
            result = callback(*args)
            return await result if inspect.isawaitable(result) else result
        except Exception:
            logger.exception("callback %r failed", callback)
            return None


def _lost(ws: ClientConnection) -> ClientError:
    """The error for a request cut off by ``ws`` closing."""
    return closed_error(ws.close_code, ws.close_reason or "")
