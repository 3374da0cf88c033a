"""Server-Sent Events at /sse/realtime/: the realtime stream over plain HTTP, for a client
that cannot open a WebSocket (a captive portal, a proxy that strips the upgrade).

PROTOCOL §11, docs/adr/0025-sse-fallback.md. One ``GET`` subscribes once, to the topics of
its ``topics`` query parameter (the subscribe frame's ``topics`` object as JSON), and
the response streams every server frame the WebSocket would send, one SSE message each,
in the same order. Publishes, acks and presence go over the HTTP API.

The stream *is* a ``RealtimeConsumer`` whose socket is an HTTP response: the same
registration (connection limits, cool-downs), the same subscribe (budgets, role matrix,
epoch, replay), the same hub fan-out, gap repair, sweep, bounded outbox, access
re-checks, withdrawal and drain. Only the two ends differ: the subscribe frame is made
from the query string, and what the consumer sends is written as SSE messages
(``send``, ``_send_text``). Before the first frame is written nothing of the response is:
a refusal (no credentials, every topic refused, a spent budget, bad input) is an HTTP
error with the JSON body of the HTTP API, never a stream.

Each event message carries an ``id:`` naming the position of every topic of the stream
(``_last_event_id``), so a browser's ``EventSource``, which sends the last one back as
``Last-Event-ID`` when it reconnects by itself, resumes every topic without loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from typing import Any
from urllib.parse import parse_qs

import orjson
from channels.exceptions import StopConsumer
from django.conf import settings

from core.logging import bind_connection

from .auth import RealtimeAuthMiddleware, _header
from .consumers import RealtimeConsumer
from .delivery import OutboxFull
from .errors import HTTP_STATUS
from .protocol import (
    CLOSE_CONNECTION_LIMIT,
    CLOSE_OVERLOADED,
    CLOSE_POLICY,
    CLOSE_RESTARTING,
    CLOSE_UNAUTHENTICATED,
    EPOCH_PATTERN,
    MAX_EPOCH_CHARS,
    MAX_TOPICS_PER_FRAME,
)
from .tokens import TokenError, atoken_authenticate

logger = logging.getLogger(__name__)

SSE_PATH = "/sse/realtime/"
# The ref of the subscribe frame a stream is opened with; its reply is the first message.
SSE_REF = "sse"
# A query string beyond this is refused (414) before it is parsed: 100 topics with their
# positions take under 6 KiB.
MAX_QUERY_BYTES = 16 * 1024
MAX_LAST_EVENT_ID_CHARS = MAX_EPOCH_CHARS + MAX_TOPICS_PER_FRAME * 20
# What the outbox carries for a heartbeat: a comment line, no message.
_HEARTBEAT = ""
_EPOCH = re.compile(EPOCH_PATTERN)
_SEQ = re.compile(r"^(0|[1-9][0-9]{0,18})\Z")
_NO_POSITION = "-"

# A close before the stream started, as an HTTP refusal: (status, error code).
_CLOSE_REFUSAL = {
    CLOSE_UNAUTHENTICATED: (401, "unauthenticated"),
    CLOSE_CONNECTION_LIMIT: (429, "limit_reached"),
    CLOSE_POLICY: (429, "rate_limited"),
    CLOSE_RESTARTING: (503, "unavailable"),
    CLOSE_OVERLOADED: (503, "unavailable"),
}
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    # nginx and ingress-nginx: pass each message on at once instead of buffering them.
    (b"x-accel-buffering", b"no"),
]


class BadRequest(Exception):
    """A request the stream cannot be opened for: its HTTP status and error object."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"code": code, "message": message, **extra}


def parse_last_event_id(value: str, order: list[str]) -> tuple[str, dict[str, int]]:
    """(epoch, {topic: seq}) of a ``Last-Event-ID`` made by ``_last_event_id`` for a
    stream of the topics ``order``; ``BadRequest`` (400) when it is not one."""
    parts = value.split(".")
    if len(value) > MAX_LAST_EVENT_ID_CHARS or len(parts) != len(order) + 1:
        raise BadRequest(
            400, "bad_request", "Last-Event-ID does not name a position for each topic"
        )
    epoch, seqs = parts[0], parts[1:]
    if not 1 <= len(epoch) <= MAX_EPOCH_CHARS or not _EPOCH.match(epoch):
        raise BadRequest(400, "bad_request", "Last-Event-ID has no valid stream epoch")
    positions: dict[str, int] = {}
    for topic, seq in zip(order, seqs, strict=True):
        if seq == _NO_POSITION:
            continue
        if not _SEQ.match(seq) or int(seq) >= 2**63:
            raise BadRequest(400, "bad_request", f"Last-Event-ID has no valid seq for {topic!r}")
        positions[topic] = int(seq)
    return epoch, positions


def subscribe_frame(scope: dict) -> tuple[str, dict[str, Any]]:
    """The subscribe frame (JSON text) a request opens its stream with, and its topics
    map; ``Last-Event-ID`` overrides the ``since``/``epoch`` of the topics it names."""
    raw = scope.get("query_string", b"")
    if len(raw) > MAX_QUERY_BYTES:
        raise BadRequest(414, "bad_request", f"the query string is over {MAX_QUERY_BYTES} bytes")
    values = parse_qs(raw.decode("latin1"), keep_blank_values=True).get("topics", [])
    if len(values) != 1:
        raise BadRequest(
            400,
            "bad_request",
            'give the topics once, as the subscribe frame\'s "topics" object in JSON:'
            ' ?topics={"wedding:42":{"since":117}}',
            field="topics",
        )
    try:
        topics = orjson.loads(values[0])
    except orjson.JSONDecodeError:
        raise BadRequest(400, "bad_request", "topics is not valid JSON", field="topics") from None
    if not isinstance(topics, dict):
        raise BadRequest(400, "invalid_payload", "topics must be a JSON object", field="topics")
    last_event_id = _header(scope, b"last-event-id")
    if last_event_id:
        epoch, positions = parse_last_event_id(last_event_id, sorted(topics))
        for topic, seq in positions.items():
            if isinstance(topics[topic], dict):
                topics[topic] = {**topics[topic], "since": seq, "epoch": epoch}
    frame = {"type": "subscribe", "ref": SSE_REF, "topics": topics}
    return orjson.dumps(frame).decode(), topics


class SseConnection(RealtimeConsumer):
    """One ``GET /sse/realtime/``: a ``RealtimeConsumer`` writing to an HTTP response."""

    __slots__ = (
        "_close_code",
        "_ended",
        "_epoch",
        "_http_send",
        "_positions",
        "_since",
        "_started",
    )

    def __init__(self) -> None:
        super().__init__()
        self._started = False  # the 200 and its headers are sent: a stream
        self._ended = asyncio.Event()  # the response is complete
        self._close_code: int | None = None
        self._positions: dict[str, int | None] = {}  # each topic's last seq written
        self._since: dict[str, int | None] = {}
        self._epoch = ""

    @classmethod
    def as_asgi(cls) -> Any:
        """The ASGI application of the SSE path (``scope["type"] == "http"``)."""

        async def app(scope: dict, receive: Any, send: Any) -> None:
            await cls().serve(scope, receive, send)

        return app

    async def serve(self, scope: dict, receive: Any, send: Any) -> None:
        bind_connection(self.conn_id, scope.get("user"))
        self.scope = scope
        self._http_send = self._base_send = send
        if scope.get("method") != "GET":
            await self._refuse(405, {"code": "method_not_allowed", "message": "use GET"})
            return
        try:
            text, topics = subscribe_frame(scope)
        except BadRequest as err:
            await self._refuse(err.status, err.body)
            return
        self._positions = {topic: None for topic in sorted(topics)}
        self._since = {
            t: o.get("since") if isinstance(o, dict) else None for t, o in topics.items()
        }
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        heartbeat: asyncio.Task | None = None
        try:
            await self.websocket_connect({"type": "websocket.connect"})
            if not self._ended.is_set() and not self.closing:
                await self.websocket_receive({"type": "websocket.receive", "text": text})
                heartbeat = asyncio.ensure_future(self._beat())
            ended = asyncio.ensure_future(self._ended.wait())
            await asyncio.wait({watcher, ended}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
        except Exception:
            # As a frame's failure on a socket (``unavailable``): never a traceback.
            logger.exception("SSE stream failed")
            if not self._started and not self._ended.is_set():
                error = {"code": "unavailable", "message": "the stream could not be opened"}
                with contextlib.suppress(Exception):
                    await self._refuse(503, error)
        finally:
            for task in (watcher, heartbeat):
                if task is not None:
                    task.cancel()
            try:
                await self.websocket_disconnect(
                    {"type": "websocket.disconnect", "code": self._close_code or 1006}
                )
            except StopConsumer:
                pass
            if not self._ended.is_set():  # the client left: end our side too
                self._ended.set()
                with contextlib.suppress(Exception):  # the connection is gone already
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def withdraw(self, topics: list[str]) -> None:
        """As on a WebSocket (``unsubscribed``, forbidden); a stream left with no topic
        then ends (1000): it cannot subscribe again, and a reconnect is refused (404)."""
        await super().withdraw(topics)
        if not self.streams and not self.closing:
            await self.close(1000, "no topic left: access to every topic was withdrawn")

    async def _beat(self) -> None:
        """A comment every ``REALTIME_SSE_HEARTBEAT`` seconds, through the outbox (after
        the frames queued before it): proxies see traffic on an idle stream, and each one
        written counts as the client being there (``last_seen``, the stale sweep)."""
        interval = settings.REALTIME_SSE_HEARTBEAT
        while not self.closing:
            await asyncio.sleep(interval)
            # Full: no room for a comment; the next live event closes it (1013).
            with contextlib.suppress(OutboxFull):
                self.outbox.put_nowait(_HEARTBEAT)

    # --- the consumer's two ends, as HTTP -----------------------------------------------

    async def send(self, message: dict) -> None:
        """The consumer's accept and close: nothing, and the end of the response (an HTTP
        refusal when nothing was streamed yet)."""
        if message["type"] != "websocket.close" or self._ended.is_set():
            return
        code, reason = message.get("code", 1000), message.get("reason", "")
        self._close_code = code
        if not self._started:
            status, error = _CLOSE_REFUSAL.get(code, (503, "unavailable"))
            body: dict[str, Any] = {"code": error, "message": reason or "connection refused"}
            wait_ms = max(1000, int(settings.REALTIME_RECONNECT_COOLDOWN * 1000))
            await self._refuse(status, body, retry_after_ms=wait_ms if status == 429 else None)
            return
        self._ended.set()
        close = orjson.dumps({"code": code, "reason": reason}).decode()
        await self._write(f"event: close\ndata: {close}\n\n".encode(), more_body=False)

    async def _send_text(self, text: str) -> None:
        """One frame from the outbox, as an SSE message (the first: the subscribe's reply,
        which decides between a stream and an HTTP refusal)."""
        if self._ended.is_set():
            return
        if text == _HEARTBEAT:
            if self._started:
                await self._write(b": keep-alive\n\n")
                self.last_seen = time.monotonic()
            return
        frame = orjson.loads(text)
        if not self._started:
            if frame.get("status") == "error" or frame.get("type") == "error":
                await self._refuse_frame(frame)
                return
            self._started = True
            await self._http_send(
                {"type": "http.response.start", "status": 200, "headers": _HEADERS}
            )
        chunk = self._message(frame, text)
        await self._write(chunk)
        self.last_seen = time.monotonic()

    def _message(self, frame: dict[str, Any], text: str) -> bytes:
        kind = frame.get("type")
        if kind == "reply" and frame.get("ref") == SSE_REF:
            for topic, status in (frame.get("topics") or {}).items():
                if status.get("status") != "ok" or topic not in self._positions:
                    continue
                self._epoch = status.get("epoch") or self._epoch
                since = self._since.get(topic)
                resumed = since is not None and status.get("recovered")
                self._positions[topic] = since if resumed else status["seq"]
            return f"id: {self._last_event_id()}\ndata: {text}\n\n".encode()
        if kind == "event" and frame.get("topic") in self._positions:
            self._positions[frame["topic"]] = frame["seq"]
            return f"id: {self._last_event_id()}\ndata: {text}\n\n".encode()
        return f"data: {text}\n\n".encode()

    def _last_event_id(self) -> str:
        """``<epoch>.<seq>.<seq>…``: the epoch, then the last seq written of each topic in
        the order of their names (``-``: none yet, a refused topic)."""
        seqs = (_NO_POSITION if s is None else str(s) for s in self._positions.values())
        return ".".join([self._epoch or "0", *seqs])

    async def _write(self, body: bytes, *, more_body: bool = True) -> None:
        await self._http_send({"type": "http.response.body", "body": body, "more_body": more_body})

    async def _refuse_frame(self, frame: dict[str, Any]) -> None:
        """The subscribe was refused as a whole: its error as an HTTP error."""
        error = {k: v for k, v in frame.items() if k not in ("type", "ref", "status")}
        code = error.get("code", "bad_frame")
        retry_after_ms = error.get("retry_after_ms")
        await self._refuse(HTTP_STATUS.get(code, 400), error, retry_after_ms=retry_after_ms)
        self.closing = True  # no more frames: the consumer's tasks see a closed connection

    async def _refuse(
        self, status: int, error: dict[str, Any], retry_after_ms: int | None = None
    ) -> None:
        self._ended.set()
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        if retry_after_ms:
            headers.append((b"retry-after", str(math.ceil(retry_after_ms / 1000)).encode()))
        body = orjson.dumps({"error": error})
        await self._http_send({"type": "http.response.start", "status": status, "headers": headers})
        await self._http_send({"type": "http.response.body", "body": body})


async def _wait_disconnect(receive: Any) -> None:
    """Return once the client has gone (``http.disconnect``); the request body is read
    and dropped on the way (a GET has none)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class SseAuthMiddleware(RealtimeAuthMiddleware):
    """The WebSocket's handshake rules (``RealtimeAuthMiddleware``), and also
    ``Authorization: Bearer <token>``, which an HTTP client can send and a WebSocket
    client usually cannot; a foreign ``Origin`` is refused with 403."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        if not await self._admit(scope):
            body = orjson.dumps({"error": {"code": "forbidden", "message": "origin not allowed"}})
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return None
        user = scope.get("user")
        bearer = _bearer(scope)
        if bearer and "auth_error" not in scope and not (user and user.is_authenticated):
            try:
                scope["user"] = await atoken_authenticate(bearer)
            except TokenError as exc:
                scope["auth_error"] = exc.code
        return await self.app(scope, receive, send)


def _bearer(scope: dict) -> str | None:
    value = _header(scope, b"authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


def with_sse(http_app: Any, sse_app: Any) -> Any:
    """The HTTP application with ``SSE_PATH`` answered by ``sse_app`` (a stream holds no
    slot of the request budget, as a WebSocket holds none: ``wedsync.asgi``)."""

    async def route(scope: dict, receive: Any, send: Any) -> None:
        path = scope["path"][len(scope.get("root_path", "")) :]
        app = sse_app if path == SSE_PATH else http_app
        await app(scope, receive, send)

    return route
