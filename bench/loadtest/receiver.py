"""Thin WebSocket receivers for the load benchmark: thousands per process, no task each.

Why not ``RealtimeClient`` (clients/python/wedsync_client) for the receivers: the client delivers
each topic's events exactly once and in order, so it drops duplicates and holds events
past a gap; a benchmark built on it could not see the very faults it must count. And a
client costs a reader task, a keepalive task and a ``websockets`` connection (with its
own buffers and futures) per connection, which at 10,000 connections on a 2-core box
takes CPU from the server being measured. Here each connection is an
``asyncio.Protocol`` driving ``websockets``' sans-I/O ``ClientProtocol``: one callback
per TCP read, one ``orjson.loads`` per frame, and every event frame goes to the
accounting (``accounting.Stream``) as the server sent it. The publishers, which need
request/reply and retries, do use ``RealtimeClient``.

A receiver speaks just enough of the protocol: it subscribes (with ``since`` after a
reconnect, as the project's client does), sends an application ``ping`` every 25 s (the
server closes a connection silent for 60 s), and reconnects with ``since`` when the
server closes it (e.g. 1013, its outbox full). No Django here.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from realtime.protocol import CLOSE_UNAUTHENTICATED

from .accounting import DeliveryTotals, Latencies, Stream, payload_sent_at_ns

logger = logging.getLogger(__name__)

KEEPALIVE_S = 25.0  # as the Python client: one lost ping still beats the 60 s idle close
HANDSHAKE_TIMEOUT_S = 30.0
# After an unrequested close (or a dropped connection) a receiver comes back like the
# project's client does on its first attempt: after uniform(0, 0.5 s).
RECONNECT_JITTER_S = 0.5
RECONNECT_BACKOFF_MAX_S = 5.0


class ReceiverError(Exception):
    """A connection or subscribe that failed; ``reason`` is short, for counting."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Receiver(asyncio.Protocol):
    """One WebSocket connection that subscribes to its topics and accounts every event."""

    def __init__(
        self,
        pool: ReceiverPool,
        token: str,
        topics: tuple[str, ...],
        source: tuple[str, int] | None = None,
    ) -> None:
        self.pool = pool
        self.token = token
        self.topics = topics
        self.source = source  # (address, 0): the local address it connects from, if chosen
        self.streams: dict[str, Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.ws: ClientProtocol | None = None
        self.handshake: asyncio.Future | None = None
        self.subscribed: asyncio.Future | None = None
        self.fragments: list[bytes] = []
        self.last_send = 0.0
        self.open = False  # handshake done, not closed since
        self.ready = False  # subscribed: a connection lost from here on is reconnected
        self.wanted_close = False  # we closed or dropped it on purpose
        self.catching_up: dict[str, int] = {}  # topic -> seq to reach after a reconnect
        self.caught_up: Callable[[Receiver], None] | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        if sockname:
            self.pool.source_hosts[sockname[0]] += 1
        self.ws = ClientProtocol(self.pool.uri_for(self.token), max_size=2**20)
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Response):
                self._handshake_done()
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT:
                if event.fin:
                    self._frame(event.data)
                else:
                    self.fragments = [event.data]
            elif opcode is Opcode.CONT:
                self.fragments.append(event.data)
                if event.fin:
                    self._frame(b"".join(self.fragments))
                    self.fragments = []
            elif opcode is Opcode.CLOSE and ws.close_rcvd is not None:
                self.pool.closes[ws.close_rcvd.code] += 1
        self._flush()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
            self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was_ready, self.open, self.ready = self.ready, False, False
        for fut in (self.handshake, self.subscribed):
            if fut is not None and not fut.done():
                fut.set_exception(ReceiverError("connection_lost"))
        self.transport = None
        closed = self.ws.close_rcvd if self.ws is not None else None
        if closed is not None and closed.code == CLOSE_UNAUTHENTICATED:
            return  # the token is no good: reconnecting cannot help
        if was_ready and not self.wanted_close:
            self.pool.connection_dropped(self)

    # --- frames -------------------------------------------------------------------------

    def _handshake_done(self) -> None:
        fut = self.handshake
        if fut is None or fut.done():
            return
        if self.ws.state is State.OPEN:
            fut.set_result(None)
        else:
            exc = self.ws.handshake_exc
            status = getattr(getattr(exc, "response", None), "status_code", None)
            fut.set_exception(ReceiverError(f"handshake_{status or 'failed'}"))

    def _frame(self, raw: bytes) -> None:
        frame = orjson.loads(raw)
        kind = frame.get("type")
        if kind == "event":
            stream = self.streams.get(frame.get("topic"))
            if stream is None:
                self.pool.strays += 1
                return
            seq = frame["seq"]
            pool = self.pool
            if stream.on_event(seq):
                pool.received += 1
                if seq > stream.window_start:
                    sent = payload_sent_at_ns(frame.get("payload"))
                    if sent is not None:
                        pool.latencies.add((time.time_ns() - sent) / 1e6)
                if self.catching_up:
                    self._check_caught_up()
            else:
                pool.duplicates += 1
        elif kind == "reply":
            if frame.get("ref") == "s" and self.subscribed is not None:
                self._subscribe_reply(frame)
        elif kind == "error":
            self.pool.errors[frame.get("code", "error")] += 1

    def _subscribe_reply(self, reply: dict) -> None:
        # Runs inside data_received, before any frame after the reply (the replay).
        fut, self.subscribed = self.subscribed, None
        statuses = reply.get("topics") or {}
        refused = [t for t in self.topics if (statuses.get(t) or {}).get("status") != "ok"]
        if refused:
            code = (statuses.get(refused[0]) or {}).get("code") or reply.get("code", "error")
            fut.set_exception(ReceiverError(f"subscribe_{code}"))
            return
        for topic in self.topics:
            status = statuses[topic]
            seq = int(status["seq"])
            stream = self.streams.get(topic)
            if stream is None:
                self.streams[topic] = Stream(topic, seq)
                continue
            if not status.get("recovered", True):
                self.pool.resets += 1  # history did not cover since: continuity is broken
            self.catching_up[topic] = seq
        if self.catching_up:
            self._check_caught_up()
        fut.set_result(None)

    def _check_caught_up(self) -> None:
        streams = self.streams
        done = [t for t, seq in self.catching_up.items() if streams[t].contig >= seq]
        for topic in done:
            del self.catching_up[topic]
        if not self.catching_up and self.caught_up is not None:
            callback, self.caught_up = self.caught_up, None
            callback(self)

    # --- sending ------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    def send(self, frame: dict) -> None:
        if self.transport is None or self.ws.state is not State.OPEN:
            return
        self.ws.send_text(orjson.dumps(frame))
        self._flush()
        self.last_send = time.monotonic()

    async def start(self, resume: bool) -> None:
        """Open the connection and subscribe (with ``since`` when resuming)."""
        loop = asyncio.get_running_loop()
        if self.transport is not None:  # an aborted connection: let its connection_lost run
            self.abort()
            for _ in range(100):
                if self.transport is None:
                    break
                await asyncio.sleep(0)
        self.wanted_close = False
        self.handshake = loop.create_future()
        pool = self.pool
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await loop.create_connection(
                    lambda: self, pool.host, pool.port, local_addr=self.source
                )
                await self.handshake
                self.open = True
                if not pool.subscribe:
                    self.ready = True
                    return
                self.subscribed = loop.create_future()
                topics = {
                    t: {"since": self.streams[t].contig} if resume and t in self.streams else {}
                    for t in self.topics
                }
                self.send({"type": "subscribe", "ref": "s", "topics": topics})
                await self.subscribed
                self.ready = True
        except TimeoutError:
            self.abort()
            raise ReceiverError("timeout") from None
        except OSError as exc:
            self.abort()
            raise ReceiverError(type(exc).__name__) from None
        except ReceiverError:
            self.abort()
            raise

    def ping(self) -> None:
        self.send({"type": "ping", "ref": "p"})

    def close(self) -> None:
        """Close normally (1000); the server's close frame ends the TCP connection."""
        self.wanted_close = True
        if self.transport is None:
            return
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self._flush()
        self.transport.close()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, like a phone losing signal."""
        self.wanted_close = True
        if self.transport is not None:
            self.transport.abort()


@dataclass
class OpenStats:
    """How a batch of connections went: counts, failures by reason, elapsed time."""

    attempted: int = 0
    succeeded: int = 0
    failures: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    connect_ms: Latencies = field(default_factory=Latencies)


class ReceiverPool:
    """The receivers of one generator process, and their counters."""

    def __init__(
        self,
        url: str,
        assignments: list[tuple[str, tuple[str, ...]]],
        *,
        subscribe: bool = True,
        concurrency: int = 100,
        source_addresses: tuple[str, ...] = (),
    ) -> None:
        self.url = url
        uri = parse_uri(url)
        self.host, self.port = uri.host, uri.port
        self.subscribe = subscribe
        self.concurrency = concurrency
        # Receiver i connects from source_addresses[i % n]: past ~28,000 connections to one
        # server port a single local address runs out of ephemeral ports.
        sources = [(address, 0) for address in source_addresses] or [None]
        self.receivers = [
            Receiver(self, token, topics, sources[i % len(sources)])
            for i, (token, topics) in enumerate(assignments)
        ]
        self.source_hosts: Counter = Counter()  # connections made, by local address
        self.opened = 0  # receivers [0, opened) have been started
        self.latencies = Latencies()
        self.received = self.duplicates = self.strays = self.resets = 0
        self.reconnects = 0
        self.closes: Counter = Counter()
        self.errors: Counter = Counter()
        self.reconnecting: set[Receiver] = set()
        self._tasks: set[asyncio.Task] = set()
        self._keepalive: asyncio.Task | None = None

    def uri_for(self, token: str):
        sep = "&" if "?" in self.url else "?"
        return parse_uri(f"{self.url}{sep}token={quote(token, safe='')}")

    @property
    def live(self) -> int:
        return sum(r.open for r in self.receivers)

    async def open(self, count: int | None = None) -> OpenStats:
        """Start the next ``count`` receivers (all the rest by default), concurrently."""
        if self._keepalive is None:
            self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())
        total = len(self.receivers)
        end = total if count is None else min(total, self.opened + count)
        batch = self.receivers[self.opened : end]
        self.opened = end
        stats = OpenStats(attempted=len(batch))
        gate = asyncio.Semaphore(self.concurrency)

        async def one(receiver: Receiver) -> None:
            async with gate:
                started = time.perf_counter()
                try:
                    await receiver.start(resume=False)
                except ReceiverError as exc:
                    stats.failures[exc.reason] += 1
                    return
                stats.succeeded += 1
                stats.connect_ms.add((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(one(r) for r in batch))
        stats.seconds = time.perf_counter() - started
        return stats

    def start_window(self, starts: dict[str, int] | None = None) -> None:
        """Begin a measurement window: each stream expects the seqs after ``starts[topic]``
        (by default, after what it has seen so far); latencies start afresh."""
        for receiver in self.receivers:
            for topic, stream in receiver.streams.items():
                start = stream.contig if starts is None else starts.get(topic, stream.contig)
                stream.start_window(start)
        self.latencies = Latencies()

    def complete(self, finals: dict[str, int]) -> bool:
        return all(
            stream.complete(finals.get(topic, 0))
            for receiver in self.receivers
            for topic, stream in receiver.streams.items()
        )

    async def wait_complete(self, finals: dict[str, int], timeout: float) -> float:
        """Wait (up to ``timeout``) until every stream has seen its topic's final seq."""
        started = time.perf_counter()
        for _ in range(max(1, round(timeout / 0.05))):
            if self.complete(finals):
                break
            await asyncio.sleep(0.05)
        return time.perf_counter() - started

    def totals(self, finals: dict[str, int]) -> DeliveryTotals:
        """The window's deliveries against the topics' final seqs."""
        totals = DeliveryTotals(latencies=self.latencies)
        for receiver in self.receivers:
            for topic, stream in receiver.streams.items():
                totals.add_stream(stream, finals.get(topic, stream.window_start))
        return totals

    def progress(self) -> dict[str, int]:
        return {
            "live": self.live,
            "received": self.received,
            "duplicates": self.duplicates,
            "reconnects": self.reconnects,
        }

    # --- reconnects ---------------------------------------------------------------------

    def connection_dropped(self, receiver: Receiver) -> None:
        """The server closed (or lost) a connection we did not close: come back with since."""
        if receiver in self.reconnecting:
            return
        self.reconnecting.add(receiver)
        self._spawn(self._reconnect(receiver, deadline=None, on_back=None))

    async def storm(self, timeout: float) -> dict:
        """Drop every open connection at once; each reconnects with since. Returns when all
        have caught up with the seq their re-subscribe reported (or after ``timeout``)."""
        loop = asyncio.get_running_loop()
        victims = [r for r in self.receivers if r.open]
        recovered_s: list[float] = []
        back_s: list[float] = []
        done = asyncio.Event()
        remaining = len(victims)
        started = time.perf_counter()

        def caught_up(receiver: Receiver) -> None:
            nonlocal remaining
            recovered_s.append(time.perf_counter() - started)
            remaining -= 1
            if remaining == 0:
                done.set()

        def back() -> None:
            back_s.append(time.perf_counter() - started)

        for receiver in victims:
            receiver.abort()
        deadline = loop.time() + timeout
        for receiver in victims:
            receiver.caught_up = caught_up
            self.reconnecting.add(receiver)
            self._spawn(self._reconnect(receiver, deadline=deadline, on_back=back))
        if not victims:
            done.set()
        try:
            async with asyncio.timeout(timeout):
                await done.wait()
        except TimeoutError:
            pass
        for receiver in victims:
            receiver.caught_up = None
        return {
            "dropped": len(victims),
            "recovered": len(recovered_s),
            "recovered_s": recovered_s,
            "reconnected_s": back_s,
        }

    async def _reconnect(
        self, receiver: Receiver, *, deadline: float | None, on_back: Callable[[], None] | None
    ) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while deadline is None or loop.time() < deadline:
                cap = min(RECONNECT_BACKOFF_MAX_S, RECONNECT_JITTER_S * 2**attempt)
                await asyncio.sleep(random.uniform(0, cap))  # noqa: S311 (jitter)
                attempt += 1
                try:
                    await receiver.start(resume=True)
                except ReceiverError as exc:
                    self.errors[f"reconnect_{exc.reason}"] += 1
                    continue
                self.reconnects += 1
                if on_back is not None:
                    on_back()
                return
        finally:
            self.reconnecting.discard(receiver)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep_alive(self) -> None:
        """Ping every receiver that has sent nothing for KEEPALIVE_S (spread over time)."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for receiver in self.receivers:
                if receiver.open and now - receiver.last_send > KEEPALIVE_S:
                    receiver.ping()

    async def close(self) -> None:
        """Close every connection normally and stop the background tasks."""
        for task in [self._keepalive, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in [self._keepalive, *self._tasks] if t is not None),
            return_exceptions=True,
        )
        for receiver in self.receivers:
            receiver.close()
        await asyncio.sleep(0.2)  # let the close frames go out
