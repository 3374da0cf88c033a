"""uvicorn's sans-I/O WebSocket protocol, lean for thousands of idle connections
(docs/adr/0035-memory-per-connection.md).

uvicorn's ``WebSocketsSansIOProtocol`` keeps, for every connection's whole life, an
``asyncio.Queue`` of received messages (three deques, ~3.3 KB), an ``asyncio.Event``
for its write flow control (a deque, ~0.9 KB) and the handshake's request and response
with their headers (~2.5 KB), none of which an idle connection uses: measured with
``bench/memtrace.py`` (docs/benchmarks.md, "Memory per idle connection"). Here the queue
is a list and at most one future while the application waits for a message, the flag a
bool and a future only while a send waits for the socket to drain, and the handshake is
dropped once answered (uvicorn's copy, and the one websockets' parser keeps). uvicorn's
attributes are slots (no instance dict of ~1.2 KB), and ``receive`` waits on the inbox's
future itself (one coroutine frame held by an idle connection, not two). Everything
else, keepalive pings and the 1009 frame limit included, is uvicorn's own code.

The protocol relies on what uvicorn 0.54 asks of ``self.queue`` (``put_nowait``,
``empty``; ``get`` before its ``receive``, replaced here) and ``self.writable`` (``set``,
``clear``, ``wait``, ``is_set``), and on the attributes it sets being the slots listed;
``tests/realtime/test_memory_per_connection.py`` runs a real server with it and fails if
uvicorn starts using anything else.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.protocol import Protocol, State
from websockets.streams import StreamReader

_AT_EOF = StreamReader.at_eof.__code__


class Inbox:
    """The received messages of one connection, for one reader at a time (the ASGI
    application's ``receive``): what uvicorn used an ``asyncio.Queue`` for. Unbounded as
    that queue was: uvicorn stops reading the socket while a message waits in it."""

    __slots__ = ("_getter", "_items")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getter: asyncio.Future | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        getter, self._getter = self._getter, None
        if getter is not None and not getter.done():
            getter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def get_nowait(self) -> Any:
        return self._items.pop(0)

    def arrival(self) -> asyncio.Future | None:
        """None when a message is there; else a future done when one arrives, for the
        one reader (a second waiting reader is a ``RuntimeError``). The reader passes it
        to ``forget`` once it stops waiting, cancelled or not."""
        if self._items:
            return None
        if self._getter is not None:
            raise RuntimeError("a connection's messages have one reader at a time")
        getter = self._getter = asyncio.get_running_loop().create_future()
        return getter

    def forget(self, getter: asyncio.Future) -> None:
        if self._getter is getter:  # cancelled while waiting
            self._getter = None

    async def get(self) -> Any:
        while (getter := self.arrival()) is not None:
            try:
                await getter
            finally:
                self.forget(getter)
        return self._items.pop(0)


class Writable:
    """Whether the socket takes more data (uvicorn's flow control: cleared by
    ``pause_writing``, set by ``resume_writing``): a bool, and a future only while a
    send waits. Any number of senders may wait (a frame being written and a close)."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = True
        self._waiter: asyncio.Future | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self) -> bool:
        while not self._flag:
            if self._waiter is None or self._waiter.done():
                self._waiter = asyncio.get_running_loop().create_future()
            # Shielded: one sender cancelled while waiting does not cancel the others.
            await asyncio.shield(self._waiter)
        return True


# The permessage-deflate factory uvicorn makes for each connection, kept from the first
# and shared: it holds only settings (websockets makes each connection's own compressor
# from it when a client negotiates compression), the same for every connection of the
# process.
_shared_extensions: tuple[ServerPerMessageDeflateFactory, ...] | None = None


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol with a lean queue and flow-control flag,
    and without the handshake kept once it is answered.

    Every attribute uvicorn 0.54 sets is a slot: its 37 attributes are more than an
    instance dict shares keys for (30 in CPython), so each connection held a dict of its
    own (~1.2 KB); slots are 8 bytes each. An attribute a later uvicorn adds still works
    (it goes to the instance dict, which then costs what it did before)."""

    __slots__ = (
        "app", "app_state", "asgi_version", "client", "close_sent", "close_timeout",
        "close_timer", "config", "conn", "connections", "curr_msg_data_type",
        "default_headers", "disconnected", "frames", "handshake_complete",
        "handshake_initiated", "initial_response", "last_ping_rtt", "logger", "loop",
        "pending_ping_payload", "ping_interval", "ping_sent_at", "ping_timeout",
        "ping_timer", "pong_timer", "queue", "read_paused", "request", "response",
        "root_path", "scheme", "scope", "server", "tasks", "transport", "writable",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Writable()  # type: ignore[assignment]
        made = self.conn.available_extensions
        if made and all(type(f) is ServerPerMessageDeflateFactory for f in made):
            global _shared_extensions
            if _shared_extensions is None:
                _shared_extensions = tuple(made)
            self.conn.available_extensions = _shared_extensions

    async def receive(self) -> Any:  # type: ignore[override]
        """uvicorn's ``receive`` with the inbox's wait written in: one coroutine frame
        held while an idle connection waits for a message, not two."""
        inbox: Inbox = self.queue  # type: ignore[assignment]
        while (getter := inbox.arrival()) is not None:
            try:
                await getter
            finally:
                inbox.forget(getter)
        message = inbox.get_nowait()
        if self.read_paused and inbox.empty():
            self.read_paused = False
            self.transport.resume_reading()
        return message

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # Answered (accepted or refused): nothing reads the request or response again.
            self.request = self.response = None
            restart_parser(self.conn)


def restart_parser(conn: Protocol) -> bool:
    """Replace the frame parser of an open connection by a fresh one, when it waits
    between two frames; whether it did.

    websockets' server parser is one generator for the connection's life, and its frame
    keeps the handshake request it parsed first (headers, path with the token) until the
    connection ends. At a frame boundary (nothing buffered, the parser waiting in
    ``at_eof``) a fresh ``Protocol.parse`` picks up exactly where it would have gone on,
    as websockets itself swaps ``parse`` for ``discard`` on a close. Anywhere else (a
    frame half read) the parser is left alone.
    """
    reader = conn.reader
    if conn.state is not State.OPEN or reader.buffer or reader.eof:
        return False
    waiting = conn.parser
    while waiting is not None and waiting.gi_code is not _AT_EOF:
        waiting = waiting.gi_yieldfrom
    if waiting is None:
        return False
    parser = Protocol.parse(conn)
    next(parser)
    conn.parser = parser
    return True
