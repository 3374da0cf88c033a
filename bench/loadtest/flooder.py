"""The hostile member of ``hostile-member``: one booked vendor's user flooding every frame
kind over several WebSocket connections, and the HTTP API, as fast as the server answers.

It runs in a process of its own (``spawn``, no Django), so that its CPU competes with the
server like a second client on the machine, not with the coordinator's planner publishes
on one event loop. Each WebSocket connection keeps ``WINDOW`` frames in flight and sends
the next kind of ``WS_KINDS`` as soon as a reply frees a slot; when the server closes it
(4008 after repeated refusals, 4029 over the connection limit, 1013 ...) it reconnects at
once, as a hostile client would. Each HTTP client sends one request after another through
``HTTP_KINDS``. Every reply is counted per kind and outcome: ``ok``, the error code of a
refused frame (``rate_limited``, ``invalid_payload`` ...), ``rate_limited`` for HTTP 429
and the status of any other HTTP answer, ``no_reply`` for a frame its connection lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import quote

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .httpclient import HttpError, KeepAliveClient
from .scenarios import FLOOD_HTTP_KINDS, FLOOD_WS_KINDS
from .worker import event_loop_factory, raise_open_file_limit

# Frames in flight per connection: enough to keep the server's queue for the connection
# full (it handles one connection's frames one after another), few enough that the replies
# of a closed connection are a small loss to the counts.
WINDOW = 16
# The longest a text may be (realtime.catalogue Text): the costliest ordinary publish.
TEXT_CHARS = 4000
# After the flood ends: how long replies in flight are awaited before the sockets close.
GRACE_S = 3.0
# A handshake that failed outright (refused, timed out) is retried after this; a
# connection the server closed after its handshake is reopened at once.
HANDSHAKE_RETRY_S = 0.02

# One round of each connection (``scenarios.FLOOD_WS_KINDS``, those chosen): a publish of
# each kind, a subscribe with since=0 followed by its unsubscribe (a full replay each
# time), presence, an ack of some event, a ping. One round of each HTTP client
# (``FLOOD_HTTP_KINDS``): publishes of both kinds, a full history page, the wedding's
# snapshot, a realtime token.
HISTORY_PAGE = 1000  # realtime.api.MAX_PAGE: the longest page a client may ask for

# The live counters shared with the coordinator (a multiprocessing Array), by index.
LIVE = ("sent", "ok", "limited", "closes", "connects")


@dataclass(frozen=True)
class FloodSpec:
    """What the flooder process is given: the server, the user's token and the wedding."""

    ws_url: str
    host: str
    port: int
    token: str
    topic: str
    wedding_id: int
    duration: float
    connections: int
    http_clients: int
    start_seq: int  # the topic's seq when the flood starts (what acks may name)
    kinds: tuple[str, ...] = FLOOD_WS_KINDS + FLOOD_HTTP_KINDS

    @property
    def ws_kinds(self) -> tuple[str, ...]:
        return tuple(k for k in FLOOD_WS_KINDS if k in self.kinds)

    @property
    def http_kinds(self) -> tuple[str, ...]:
        return tuple(k for k in FLOOD_HTTP_KINDS if k in self.kinds)


def _rotated(kinds: tuple[str, ...], index: int) -> tuple[str, ...]:
    """``kinds`` starting at the ``index``-th: connections do not all send alike at once."""
    k = index % len(kinds)
    return kinds[k:] + kinds[:k]


def filler(tag: str) -> str:
    """A text of exactly TEXT_CHARS characters starting with ``tag``."""
    return (f"{tag} " + "flood " * (TEXT_CHARS // 6 + 1))[:TEXT_CHARS]


class Flooder:
    """The flood of one user: WebSocket connections and HTTP clients, and their counts."""

    def __init__(self, spec: FloodSpec, live: Any = None) -> None:
        self.spec = spec
        self.live = live if live is not None else [0] * len(LIVE)
        self.counts: dict[str, Counter] = defaultdict(Counter)  # kind -> outcome -> n
        self.sent: Counter = Counter()  # kind -> frames or requests sent
        self.closes: Counter = Counter()  # close code -> connections the server closed
        self.handshakes: Counter = Counter()  # why a handshake failed
        self.connects = 0
        self.events_received = 0  # event frames the flooder's connections were sent
        self.replayed_ws = 0  # events the ok replays of its subscribes covered
        self.replayed_http = 0  # events of the ok history pages
        self.max_seq = spec.start_seq
        self.stopping = False
        self.started = self.ended = 0.0
        self.ws_connections = self.http_clients = 0
        sep = "&" if "?" in spec.ws_url else "?"
        self.uri = f"{spec.ws_url}{sep}token={quote(spec.token, safe='')}"

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Flood for ``spec.duration`` seconds; the counts when every socket is closed."""
        self.started = time.monotonic()
        spec = self.spec
        self.ws_connections = spec.connections if spec.ws_kinds else 0
        self.http_clients = spec.http_clients if spec.http_kinds else 0
        tasks = [asyncio.ensure_future(self._ws(i)) for i in range(self.ws_connections)]
        tasks += [asyncio.ensure_future(self._http(i)) for i in range(self.http_clients)]
        await asyncio.sleep(self.spec.duration)
        self.stopping = True
        if tasks:  # none in a control run (no connection, no HTTP client)
            _, late = await asyncio.wait(tasks, timeout=GRACE_S + 10)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.ended = time.monotonic()
        return self.result()

    def result(self) -> dict[str, Any]:
        kinds = {k: {"sent": self.sent[k], **dict(self.counts[k])} for k in self.sent}
        return {
            "seconds": round(self.ended - self.started, 3),
            "kinds": kinds,
            "ws": {
                "connections": self.ws_connections,
                "connects": self.connects,
                "reconnects": max(0, self.connects - self.ws_connections),
                "server_closes": {str(k): v for k, v in self.closes.most_common()},
                "handshake_failures": dict(self.handshakes),
                "events_received": self.events_received,
                "replayed_events": self.replayed_ws,
            },
            "http": {"clients": self.http_clients, "replayed_events": self.replayed_http},
            "kinds_chosen": list(self.spec.kinds),
            "max_seq_seen": self.max_seq,
        }

    def _count(self, kind: str, outcome: str) -> None:
        self.counts[kind][outcome] += 1
        if outcome == "ok":
            self.live[1] += 1
        elif outcome == "rate_limited":
            self.live[2] += 1

    # --- WebSocket ----------------------------------------------------------------------

    async def _ws(self, index: int) -> None:
        kinds = itertools.cycle(_rotated(self.spec.ws_kinds, index))
        frames = itertools.count(1)
        while not self.stopping:
            try:
                ws = await connect(
                    self.uri, compression=None, proxy=None, ping_interval=None,
                    open_timeout=10, close_timeout=2, max_size=2**20,
                )  # fmt: skip
            except InvalidStatus as exc:
                self.handshakes[f"http_{exc.response.status_code}"] += 1
                await asyncio.sleep(HANDSHAKE_RETRY_S)
                continue
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self.handshakes[type(exc).__name__] += 1
                await asyncio.sleep(HANDSHAKE_RETRY_S)
                continue
            self.connects += 1
            self.live[4] += 1
            try:
                await self._drive(ws, index, kinds, frames)
            finally:
                with contextlib.suppress(Exception):
                    await ws.close()
            if not self.stopping:  # the server closed it (or the connection dropped)
                received = ws.protocol.close_rcvd
                self.closes[received.code if received is not None else "dropped"] += 1
                self.live[3] += 1

    async def _drive(self, ws: ClientConnection, index: int, kinds: Any, frames: Any) -> None:
        window = asyncio.Semaphore(WINDOW)
        pending: dict[str, str] = {}  # ref -> kind
        drained = asyncio.Event()  # set by the reader whenever nothing is pending
        reader = asyncio.ensure_future(self._read(ws, window, pending, drained))
        try:
            while True:
                await window.acquire()
                if self.stopping or reader.done():
                    break
                kind = next(kinds)
                for frame_kind, frame in self._ws_frames(kind, index, next(frames)):
                    if frame_kind != kind:  # a second frame (unsubscribe): its own slot
                        await window.acquire()
                        if reader.done():
                            break
                    ref = f"{next(frames)}"
                    frame["ref"] = ref
                    pending[ref] = frame_kind
                    self.sent[frame_kind] += 1
                    self.live[0] += 1
                    await ws.send(orjson.dumps(frame).decode())
            if pending and not reader.done():  # over: let the replies in flight come back
                drained.clear()
                waiter = asyncio.ensure_future(drained.wait())
                await asyncio.wait(
                    {reader, waiter}, timeout=GRACE_S, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            for kind in pending.values():
                self._count(kind, "no_reply")
            pending.clear()

    def _ws_frames(self, kind: str, index: int, n: int) -> list[tuple[str, dict[str, Any]]]:
        topic = self.spec.topic
        if kind == "message":
            payload = {"text": filler(f"c{index}-{n}")}
            return [(kind, {"type": "publish", "topic": topic, "event": "message.posted",
                            "payload": payload})]  # fmt: skip
        if kind == "emergency":
            payload = {"kind": "flood", "text": filler(f"c{index}-{n}")}
            return [(kind, {"type": "publish", "topic": topic, "event": "emergency.raised",
                            "payload": payload})]  # fmt: skip
        if kind == "replay":
            return [
                (kind, {"type": "subscribe", "topics": {topic: {"since": 0}}}),
                ("unsubscribe", {"type": "unsubscribe", "topics": [topic]}),
            ]
        if kind == "presence":
            return [(kind, {"type": "presence", "topic": topic})]
        if kind == "ack":
            seq = random.randint(1, max(1, self.max_seq))  # noqa: S311 (any event)
            return [(kind, {"type": "ack", "topic": topic, "seq": seq})]
        return [(kind, {"type": "ping"})]

    async def _read(self, ws: ClientConnection, window: asyncio.Semaphore,
                    pending: dict[str, str], drained: asyncio.Event) -> None:  # fmt: skip
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "event":
                    self.events_received += 1
                    continue
                if kind not in ("reply", "pong", "error"):
                    continue  # presence diffs, unsubscribed notices
                sent_kind = pending.pop(frame.get("ref"), None)
                if sent_kind is None:
                    self._count("unmatched", str(frame.get("code") or kind))
                    continue
                window.release()
                if not pending:
                    drained.set()
                if kind == "pong" or frame.get("status") == "ok":
                    self._ok(sent_kind, frame)
                else:
                    self._count(sent_kind, str(frame.get("code") or "error"))
        except ConnectionClosed:
            pass
        finally:
            for _ in range(WINDOW + 1):  # wake the writer whatever it waits for
                window.release()

    def _ok(self, kind: str, reply: dict[str, Any]) -> None:
        self._count(kind, "ok")
        seq = reply.get("seq")
        if kind == "replay":
            status = (reply.get("topics") or {}).get(self.spec.topic) or {}
            seq = status.get("seq")
            if status.get("status") == "ok" and status.get("recovered") and seq:
                self.replayed_ws += int(seq)  # replayed from since=0
        if isinstance(seq, int) and seq > self.max_seq:
            self.max_seq = seq

    # --- HTTP ---------------------------------------------------------------------------

    async def _http(self, index: int) -> None:
        spec = self.spec
        headers = {"Authorization": f"Bearer {spec.token}", "Accept": "application/json"}
        client = KeepAliveClient(spec.host, spec.port, headers)
        kinds = itertools.cycle(_rotated(spec.http_kinds, index))
        events = f"/api/weddings/{spec.wedding_id}/events"
        try:
            for n in itertools.count(1):
                if self.stopping:
                    return
                kind = next(kinds)
                body: bytes | None = None
                if kind == "http_message":
                    method, path = "POST", events
                    body = orjson.dumps({"event": "message.posted",
                                         "payload": {"text": filler(f"h{index}-{n}")}})  # fmt: skip
                elif kind == "http_emergency":
                    method, path = "POST", events
                    body = orjson.dumps({"event": "emergency.raised", "payload": {
                        "kind": "flood", "text": filler(f"h{index}-{n}")}})  # fmt: skip
                elif kind == "http_history":
                    method, path = "GET", f"{events}?since=0&limit={HISTORY_PAGE}"
                elif kind == "http_snapshot":
                    method, path = "GET", f"/api/weddings/{spec.wedding_id}/"
                else:
                    method, path, body = "POST", "/api/realtime/token", b"{}"
                self.sent[kind] += 1
                self.live[0] += 1
                try:
                    status, content = await client.request(method, path, body)
                except (HttpError, OSError) as exc:
                    self._count(kind, type(exc).__name__)
                    await asyncio.sleep(HANDSHAKE_RETRY_S)
                    continue
                if 200 <= status < 300:
                    self._count(kind, "ok")
                    if kind == "http_history":
                        self.replayed_http += len(orjson.loads(content).get("events") or ())
                else:
                    self._count(kind, "rate_limited" if status == 429 else str(status))
        finally:
            await client.close()


# --- the process ----------------------------------------------------------------------------


def flood_main(spec: FloodSpec, conn: Connection, live: Any) -> None:
    """Entry point of the flooder process: ready, wait for go, flood, send the counts."""
    raise_open_file_limit()
    try:
        conn.send(("ready", None))
        conn.recv()  # ("go",)
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            result = runner.run(Flooder(spec, live).run())
        conn.send(("done", result))
    except (EOFError, OSError):  # the coordinator is gone
        return
    except Exception:
        conn.send(("error", traceback.format_exc()))


class FloodProcess:
    """The coordinator's end of the flooder process."""

    def __init__(self, spec: FloodSpec) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.spec = spec
        self.live = ctx.Array("q", len(LIVE), lock=False)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=flood_main, args=(spec, child, self.live), name="loadtest-flooder", daemon=True
        )
        self._child = child

    async def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until it is ready to flood."""
        self.proc.start()
        self._child.close()
        await asyncio.to_thread(self._expect, "ready", timeout)

    def go(self) -> None:
        self.conn.send(("go",))

    async def result(self) -> dict[str, Any]:
        """The flood's counts, once it is over (its duration plus the grace for replies)."""
        return await asyncio.to_thread(self._expect, "done", self.spec.duration + GRACE_S + 60)

    def live_counts(self) -> dict[str, int]:
        return dict(zip(LIVE, self.live, strict=True))

    def _expect(self, kind: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"the flooder process sent no {kind!r} within {timeout:g} s")
        got, payload = self.conn.recv()
        if got == "error":
            raise RuntimeError(f"the flooder process failed:\n{payload}")
        if got != kind:
            raise RuntimeError(f"the flooder process sent {got!r}, not {kind!r}")
        return payload

    async def stop(self) -> None:
        """End the process (it has normally ended by itself)."""
        if self.proc.pid is None:  # never started
            self.conn.close()
            return
        await asyncio.to_thread(self.proc.join, 5)
        if self.proc.is_alive():
            self.proc.terminate()
            await asyncio.to_thread(self.proc.join, 5)
        self.conn.close()
