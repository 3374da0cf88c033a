"""The Python client against a fake protocol server (PROTOCOL.md v1).

The fake keeps an in-memory log per topic and answers frames by ``ref``; tests script
it (drop a connection, refuse a token, inject duplicates or gaps) to check how the client
handles the protocol. End-to-end tests against the real server live elsewhere.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from wedsync_client.client import ClientError, ConnectionLost, RealtimeClient, RequestTimeout

pytestmark = pytest.mark.timeout(5)

Hook = Callable[[ServerConnection, dict], Awaitable[bool]]


def event_frame(topic: str, seq: int, text: str = "") -> dict:
    return {
        "type": "event",
        "topic": topic,
        "seq": seq,
        "event": "message.posted",
        "priority": "normal",
        "payload": {"text": text or f"m{seq}"},
        "actor": {"user_id": 7, "supplier_id": 3},
        "ts": "2026-06-13T14:02:11.123Z",
    }


class FakeServer:
    """Just enough of the protocol: subscribe with since/replay, publish with keys, ping."""

    def __init__(self) -> None:
        self.url = ""
        self.log: dict[str, list[dict]] = defaultdict(list)
        self.pruned_upto: dict[str, int] = {}  # since below this is not recoverable
        self.keys: dict[str, int] = {}
        self.frames: list[dict] = []  # every frame received, in order
        self.tokens: list[str | None] = []  # the token of every handshake
        self.connections: list[ServerConnection] = []
        self.subs: dict[ServerConnection, set[str]] = defaultdict(set)
        self.refuse_tokens: set[str] = set()  # accepted, then closed with 4001
        self.forbidden: set[str] = {"wedding:forbidden"}
        self.hook: Hook | None = None  # returns True when it handled the frame itself

    def of_type(self, kind: str) -> list[dict]:
        return [f for f in self.frames if f.get("type") == kind]

    async def handle(self, ws: ServerConnection) -> None:
        token = parse_qs(urlsplit(ws.request.path).query).get("token", [None])[0]
        self.tokens.append(token)
        self.connections.append(ws)
        if token in self.refuse_tokens:
            await ws.close(4001, "token expired")
            return
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                self.frames.append(frame)
                if self.hook is not None and await self.hook(ws, frame):
                    continue
                await self.answer(ws, frame)
        except ConnectionClosed:
            pass  # closed by a test with a non-1000 code: expected
        finally:
            self.subs.pop(ws, None)

    async def answer(self, ws: ServerConnection, frame: dict) -> None:
        ref, kind = frame["ref"], frame["type"]
        if kind == "ping":
            await send(ws, {"type": "pong", "ref": ref})
        elif kind == "subscribe":
            await self.subscribe(ws, ref, frame["topics"])
        elif kind == "unsubscribe":
            self.subs[ws].difference_update(frame["topics"])
            await reply(ws, ref, topics=frame["topics"])
        elif kind == "publish":
            seq = self.keys.get(frame["idempotency_key"])
            if seq is None:
                seq = self.store(frame["topic"], frame["payload"].get("text", ""))
                self.keys[frame["idempotency_key"]] = seq
                await self.broadcast(self.log[frame["topic"]][-1])
            await reply(ws, ref, topic=frame["topic"], seq=seq)
        elif kind == "presence":
            members = [{"user_id": 7, "name": "Ana", "supplier_id": 3}]
            await reply(ws, ref, topic=frame["topic"], members=members)
        elif kind == "ack":
            await reply(ws, ref, topic=frame["topic"], seq=frame["seq"])

    async def subscribe(self, ws: ServerConnection, ref: str, topics: dict) -> None:
        statuses: dict[str, dict] = {}
        replay: list[dict] = []
        for topic, options in topics.items():
            if not topic.startswith("wedding:") or topic in self.forbidden:
                statuses[topic] = {"status": "error", "code": "forbidden", "message": "no"}
                continue
            seq, since = len(self.log[topic]), options.get("since")
            statuses[topic] = {"status": "ok", "seq": seq}
            if since is not None:
                recovered = self.pruned_upto.get(topic, 0) <= since <= seq
                statuses[topic]["recovered"] = recovered
                if recovered:
                    replay += self.log[topic][since:]
            self.subs[ws].add(topic)
        if all(s["status"] == "error" for s in statuses.values()):
            await error_reply(ws, ref, "forbidden", topics=statuses)
            return
        await reply(ws, ref, topics=statuses)
        for event in replay:
            await send(ws, event)

    def store(self, topic: str, text: str = "") -> int:
        """Append an event to the log without broadcasting it (as if it were missed)."""
        seq = len(self.log[topic]) + 1
        self.log[topic].append(event_frame(topic, seq, text))
        return seq

    async def emit(self, topic: str, text: str = "") -> int:
        """Store an event and send it to the current subscribers."""
        seq = self.store(topic, text)
        await self.broadcast(self.log[topic][-1])
        return seq

    async def broadcast(self, frame: dict) -> None:
        for ws, topics in list(self.subs.items()):
            if frame["topic"] in topics:
                await send(ws, frame)

    async def send_all(self, frame: dict) -> None:
        for ws in list(self.subs):
            await send(ws, frame)

    async def close_all(self, code: int, reason: str = "") -> None:
        for ws in list(self.connections):  # closing a closed one is a no-op
            await ws.close(code, reason)


async def send(ws: ServerConnection, frame: dict) -> None:
    await ws.send(orjson.dumps(frame).decode())


async def reply(ws: ServerConnection, ref: str, **fields: Any) -> None:
    await send(ws, {"type": "reply", "ref": ref, "status": "ok", **fields})


async def error_reply(ws: ServerConnection, ref: str, code: str, **fields: Any) -> None:
    await send(ws, {"type": "reply", "ref": ref, "status": "error", "code": code,
                    "message": code.replace("_", " "), **fields})  # fmt: skip


class Recorder:
    """Callbacks that record what the client reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.states: list[str] = []
        self.resets: list[tuple[str, int]] = []
        self.topic_errors: list[tuple[str, dict]] = []
        self.presence: list[dict] = []
        self.reset_returns: int | None = None

    async def on_event(self, frame: dict) -> None:  # async: the client awaits it
        self.events.append((frame["topic"], frame["seq"]))

    def on_state(self, state: str) -> None:
        self.states.append(state)

    def on_reset(self, topic: str, seq: int) -> int | None:
        self.resets.append((topic, seq))
        return self.reset_returns

    def on_topic_error(self, topic: str, status: dict) -> None:
        self.topic_errors.append((topic, status))

    def on_presence(self, frame: dict) -> None:
        self.presence.append(frame)

    def seqs(self, topic: str) -> list[int]:
        return [seq for t, seq in self.events if t == topic]


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = FakeServer()
    async with serve(server.handle, "127.0.0.1", 0, compression=None) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        server.url = f"ws://127.0.0.1:{port}/ws/realtime/"
        yield server


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def make_client(
    fake: FakeServer, rec: Recorder
) -> AsyncIterator[Callable[..., RealtimeClient]]:
    """Build clients wired to the recorder with fast timings; close them and check no
    client task outlives the test."""
    clients: list[RealtimeClient] = []

    def make(**options: Any) -> RealtimeClient:
        settings: dict[str, Any] = {
            "token": "good",
            "on_event": rec.on_event,
            "on_state": rec.on_state,
            "on_reset": rec.on_reset,
            "on_topic_error": rec.on_topic_error,
            "on_presence": rec.on_presence,
            "backoff_initial": 0.01,
            "backoff_max": 0.05,
            "request_timeout": 1.0,
        }
        client = RealtimeClient(fake.url, **(settings | options))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
    left = [t for t in asyncio.all_tasks() if "RealtimeClient" in repr(t.get_coro())]
    assert not left, left


async def until(condition: Callable[[], bool]) -> None:
    """Poll a condition the client exposes no event for (state, server-side counts)."""
    async with asyncio.timeout(2):
        while not condition():
            await asyncio.sleep(0.005)


# --- subscribe ------------------------------------------------------------------------


async def test_subscribe__returns_per_topic_statuses_and_tracks_only_ok_topics(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    # given
    await fake.emit("wedding:1")
    await fake.emit("wedding:1")
    client = make_client()
    await client.connect()
    # when
    statuses = await client.subscribe("wedding:1", "wedding:2", "wedding:forbidden")
    # then
    assert statuses == {
        "wedding:1": {"status": "ok", "seq": 2},
        "wedding:2": {"status": "ok", "seq": 0},
        "wedding:forbidden": {"status": "error", "code": "forbidden", "message": "no"},
    }
    assert client.last_seq("wedding:1") == 2
    assert client.last_seq("wedding:2") == 0
    assert client.last_seq("wedding:forbidden") is None
    frame = fake.of_type("subscribe")[0]
    assert frame["topics"] == {"wedding:1": {}, "wedding:2": {}, "wedding:forbidden": {}}
    assert isinstance(frame["ref"], str) and len(frame["ref"]) <= 32


async def test_subscribe__since_is_sent_and_missed_events_are_replayed(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    for _ in range(4):
        fake.store("wedding:1")
    client = make_client()
    await client.connect()

    statuses = await client.subscribe("wedding:1", since={"wedding:1": 1})

    assert statuses["wedding:1"] == {"status": "ok", "seq": 4, "recovered": True}
    assert fake.of_type("subscribe")[0]["topics"] == {"wedding:1": {"since": 1}}
    await client.wait_for_seq("wedding:1", 4, timeout=1)
    assert rec.seqs("wedding:1") == [2, 3, 4]


async def test_subscribe__whole_frame_error_raises_client_error_with_reply(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    async def rate_limit(ws: ServerConnection, frame: dict) -> bool:
        await error_reply(ws, frame["ref"], "rate_limited")
        return True

    fake.hook = rate_limit
    client = make_client()
    await client.connect()

    with pytest.raises(ClientError) as err:
        await client.subscribe("wedding:1")

    assert err.value.code == "rate_limited"
    assert err.value.reply["ref"] == fake.frames[0]["ref"]
    assert client.last_seq("wedding:1") is None


async def test_subscribe__every_topic_refused_raises_with_per_topic_statuses(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client()
    await client.connect()

    with pytest.raises(ClientError) as err:
        await client.subscribe("wedding:forbidden", "supplier:1")

    assert err.value.code == "forbidden"
    assert set(err.value.reply["topics"]) == {"wedding:forbidden", "supplier:1"}
    assert client.topics == []


async def test_subscribe__more_than_100_topics_go_out_in_chunks(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client()
    await client.connect()

    statuses = await client.subscribe(*[f"wedding:{i}" for i in range(150)])

    assert len(statuses) == 150
    assert [len(f["topics"]) for f in fake.of_type("subscribe")] == [100, 50]


# --- publish --------------------------------------------------------------------------


async def test_publish__returns_seq_and_sends_a_generated_idempotency_key(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client()
    await client.connect()

    first = await client.publish("wedding:1", "message.posted", {"text": "hi"})
    second = await client.publish("wedding:1", "message.posted", {"text": "again"})

    assert (first, second) == (1, 2)
    keys = [f["idempotency_key"] for f in fake.of_type("publish")]
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in keys)
    assert keys[0] != keys[1]
    assert fake.of_type("publish")[0] | {"ref": "x", "idempotency_key": "k"} == {
        "type": "publish", "ref": "x", "topic": "wedding:1", "event": "message.posted",
        "payload": {"text": "hi"}, "idempotency_key": "k",
    }  # fmt: skip


async def test_publish__same_key_twice_returns_the_first_seq(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client()
    await client.connect()

    first = await client.publish("wedding:1", "message.posted", {}, idempotency_key="k-1")
    again = await client.publish("wedding:1", "message.posted", {}, idempotency_key="k-1")

    assert first == again == 1
    assert len(fake.log["wedding:1"]) == 1


async def test_publish__retried_after_connection_drop_resends_the_same_key(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    # given: the server stores the first publish, then restarts before replying
    async def store_then_drop(ws: ServerConnection, frame: dict) -> bool:
        if frame["type"] != "publish" or len(fake.of_type("publish")) > 1:
            return False
        fake.keys[frame["idempotency_key"]] = fake.store(frame["topic"])
        await ws.close(1012, "restarting")
        return True

    fake.hook = store_then_drop
    client = make_client()
    await client.connect()
    await client.subscribe("wedding:1")
    # when
    seq = await client.publish("wedding:1", "message.posted", {"text": "hi"})
    # then: one event stored, delivered once (replayed on re-subscribe), same key twice
    assert seq == 1
    assert len(fake.log["wedding:1"]) == 1
    first, retry = fake.of_type("publish")
    assert first["idempotency_key"] == retry["idempotency_key"]
    assert first["ref"] != retry["ref"]
    await client.wait_for_seq("wedding:1", 1, timeout=1)
    assert rec.seqs("wedding:1") == [1]


async def test_publish__unavailable_is_retried_other_errors_raise(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    async def flaky(ws: ServerConnection, frame: dict) -> bool:
        count = len(fake.of_type("publish"))
        if frame["type"] == "publish" and count == 1:
            await error_reply(ws, frame["ref"], "unavailable")
            return True
        if frame["type"] == "publish" and count == 3:
            current = {"id": 5, "version": 3}
            await error_reply(ws, frame["ref"], "conflict", current=current)
            return True
        return False

    fake.hook = flaky
    client = make_client()
    await client.connect()

    assert await client.publish("wedding:1", "message.posted", {}) == 1
    with pytest.raises(ClientError) as err:
        await client.publish("wedding:1", "timeline.item.updated", {"id": 5, "version": 2})

    assert err.value.code == "conflict"
    assert err.value.reply["current"] == {"id": 5, "version": 3}
    assert len(fake.of_type("publish")) == 3


async def test_publish__too_large_frame_is_refused_locally(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client()
    await client.connect()

    with pytest.raises(ClientError) as err:
        await client.publish("wedding:1", "message.posted", {"text": "x" * 70_000})

    assert err.value.code == "too_large"
    assert fake.of_type("publish") == []


# --- delivery -------------------------------------------------------------------------


async def test_events__delivered_once_in_order_duplicates_dropped(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    client = make_client()
    await client.connect()
    await client.subscribe("wedding:1", "wedding:2")

    for seq in (1, 1, 3, 2, 2, 3, 5, 4):
        await fake.send_all(event_frame("wedding:1", seq))
    await fake.send_all(event_frame("wedding:2", 1))
    await fake.send_all(event_frame("wedding:9", 1))  # not subscribed: ignored

    await client.wait_for_seq("wedding:1", 5, timeout=1)
    await client.wait_for_seq("wedding:2", 1, timeout=1)
    assert rec.seqs("wedding:1") == [1, 2, 3, 4, 5]
    assert rec.seqs("wedding:2") == [1]
    assert rec.seqs("wedding:9") == []


async def test_events__a_gap_that_does_not_fill_resyncs_from_last_seq(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    # given: the server "loses" event 2 on the live path; its log has it
    client = make_client(gap_timeout=0.1)
    await client.connect()
    await client.subscribe("wedding:1")
    await fake.emit("wedding:1")
    fake.store("wedding:1")
    await fake.emit("wedding:1")
    # when
    await client.wait_for_seq("wedding:1", 3, timeout=2)
    # then: the client reconnected and re-subscribed from 1; each event once
    assert rec.seqs("wedding:1") == [1, 2, 3]
    assert fake.of_type("subscribe")[-1]["topics"] == {"wedding:1": {"since": 1}}
    assert len(fake.connections) == 2


async def test_events__a_failing_callback_does_not_stop_delivery(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    seen: list[int] = []

    def on_event(frame: dict) -> None:
        seen.append(frame["seq"])
        if frame["seq"] == 1:
            raise RuntimeError("app bug")

    client = make_client(on_event=on_event)
    await client.connect()
    await client.subscribe("wedding:1")
    await fake.emit("wedding:1")
    await fake.emit("wedding:1")

    await client.wait_for_seq("wedding:1", 2, timeout=1)
    assert seen == [1, 2]


async def test_events__a_callback_awaiting_a_request_fails_fast_instead_of_hanging(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    errors: list[str] = []
    acked: list[asyncio.Task] = []

    async def on_event(frame: dict) -> None:
        try:
            await client.ack(frame["topic"], frame["seq"])
        except ClientError as exc:
            errors.append(exc.code)
        acked.append(asyncio.ensure_future(client.ack(frame["topic"], frame["seq"])))

    client = make_client(on_event=on_event)
    await client.connect()
    await client.subscribe("wedding:1")
    await fake.emit("wedding:1")
    await client.wait_for_seq("wedding:1", 1, timeout=1)

    await asyncio.gather(*acked)
    assert errors == ["reentrant"]
    assert [f["seq"] for f in fake.of_type("ack")] == [1]


async def test_events__a_callback_may_close_the_client(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    async def on_event(frame: dict) -> None:
        await client.close()

    client = make_client(on_event=on_event)
    await client.connect()
    await client.subscribe("wedding:1")
    await fake.emit("wedding:1")

    await until(lambda: client.state == "closed")
    assert rec.states == ["connecting", "live", "closed"]
    assert len(fake.connections) == 1


async def test_presence_diff_and_unsubscribed_frames_reach_their_callbacks(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    client = make_client()
    await client.connect()
    await client.subscribe("wedding:1")
    diff = {"type": "presence_diff", "topic": "wedding:1", "joins": [], "leaves": []}

    await fake.send_all(diff)
    await fake.send_all({"type": "unsubscribed", "topic": "wedding:1", "code": "forbidden"})

    await until(lambda: bool(rec.topic_errors))
    assert rec.presence == [diff]
    assert rec.topic_errors[0][0] == "wedding:1"
    assert client.last_seq("wedding:1") is None


# --- reconnect ------------------------------------------------------------------------


async def test_reconnect__after_1012_resubscribes_with_since_and_replays_once(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    # given
    client = make_client()
    await client.connect()
    await client.subscribe("wedding:1", "wedding:2")
    await fake.emit("wedding:1")
    await fake.emit("wedding:1")
    await client.wait_for_seq("wedding:1", 2, timeout=1)
    # when: the server restarts; events are stored while the client is away
    await fake.close_all(1012, "restarting")
    fake.store("wedding:1")
    fake.store("wedding:1")
    fake.store("wedding:2")
    await client.wait_for_seq("wedding:1", 4, timeout=2)
    await client.wait_for_seq("wedding:2", 1, timeout=1)
    await until(lambda: client.state == "live")
    await fake.emit("wedding:1")
    await client.wait_for_seq("wedding:1", 5, timeout=1)
    # then
    resubscribe = fake.of_type("subscribe")[1]
    assert resubscribe["topics"] == {"wedding:1": {"since": 2}, "wedding:2": {"since": 0}}
    assert len(fake.of_type("subscribe")) == 2
    assert rec.seqs("wedding:1") == [1, 2, 3, 4, 5]
    assert rec.seqs("wedding:2") == [1]
    assert rec.states == ["connecting", "live", "reconnecting", "live"]
    assert fake.tokens == ["good", "good"]


async def test_reconnect__recovered_false_calls_on_reset_and_jumps_to_reply_seq(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    # given: the client saw 1; while it is away 2..4 are stored and 1..3 pruned
    client = make_client()
    await client.connect()
    await client.subscribe("wedding:1")
    await fake.emit("wedding:1")
    await client.wait_for_seq("wedding:1", 1, timeout=1)
    await fake.close_all(1013, "overloaded")
    for _ in range(3):
        fake.store("wedding:1")
    fake.pruned_upto["wedding:1"] = 3
    # when
    await client.wait_for_seq("wedding:1", 4, timeout=2)
    await until(lambda: client.state == "live")
    await fake.emit("wedding:1")
    await client.wait_for_seq("wedding:1", 5, timeout=1)
    # then: no replay; the app reloaded its snapshot at 4 and gets 5 live
    assert rec.resets == [("wedding:1", 4)]
    assert rec.seqs("wedding:1") == [1, 5]


async def test_subscribe__on_reset_may_return_the_snapshot_seq_to_skip_to(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    for _ in range(3):
        fake.store("wedding:1")
    fake.pruned_upto["wedding:1"] = 2
    rec.reset_returns = 5  # the snapshot the app loaded already includes 4 and 5
    client = make_client()
    await client.connect()

    statuses = await client.subscribe("wedding:1", since={"wedding:1": 1})
    for _ in range(3):
        await fake.emit("wedding:1")

    await client.wait_for_seq("wedding:1", 6, timeout=1)
    assert statuses["wedding:1"]["recovered"] is False
    assert rec.resets == [("wedding:1", 3)]
    assert rec.seqs("wedding:1") == [6]


async def test_reconnect__topic_refused_on_resubscribe_is_reported_and_dropped(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    # given: access to wedding:2 is withdrawn while the client is away
    client = make_client()
    await client.connect()
    await client.subscribe("wedding:1", "wedding:2")
    fake.forbidden.add("wedding:2")
    # when
    await fake.close_all(1012)
    await until(lambda: len(fake.connections) == 2 and client.state == "live")
    # then
    assert client.topics == ["wedding:1"]
    assert [(t, s["code"]) for t, s in rec.topic_errors] == [("wedding:2", "forbidden")]


async def test_reconnect__every_topic_refused_on_resubscribe_does_not_loop(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    client = make_client()
    await client.connect()
    await client.subscribe("wedding:2")
    fake.forbidden.add("wedding:2")

    await fake.close_all(1012)
    await until(lambda: client.state == "live" and len(fake.connections) == 2)
    await asyncio.sleep(0.1)

    assert client.topics == []
    assert [t for t, _ in rec.topic_errors] == ["wedding:2"]
    assert len(fake.connections) == 2


async def test_reconnect__4001_stops_reconnecting_with_state_unauthorized(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    # given: a token that the server refuses (accept, then close 4001)
    fake.refuse_tokens.add("exp/ired+token")
    client = make_client(token="exp/ired+token")
    # when
    await client.connect()
    await until(lambda: client.state == "unauthorized")
    await asyncio.sleep(0.2)  # many back-offs' worth
    # then
    assert fake.tokens == ["exp/ired+token"]  # URL-encoded on the way, decoded by the server
    assert rec.states == ["connecting", "live", "unauthorized"]
    assert client.error is not None and client.error.code == "unauthorized"
    with pytest.raises(ClientError) as err:
        await client.ping()
    assert err.value.code == "unauthorized"


async def test_reconnect__1013_close_code_is_followed_by_a_reconnect(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    client = make_client()
    await client.connect()

    await fake.close_all(1013, "queue full")
    await until(lambda: len(fake.connections) == 2 and client.state == "live")

    assert await client.ping() >= 0


async def test_reconnect__4029_backs_off_longer(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(backoff_max=0.4)
    await client.connect()
    loop = asyncio.get_running_loop()

    closed_at = loop.time()
    await fake.close_all(4029, "connection limit")
    await until(lambda: len(fake.connections) == 2)

    assert loop.time() - closed_at >= 0.2  # at least half of backoff_max


async def test_reconnect__disabled_closes_and_fails_pending_requests(
    fake: FakeServer, make_client: Callable[..., RealtimeClient], rec: Recorder
) -> None:
    async def drop(ws: ServerConnection, frame: dict) -> bool:
        await ws.close(1012)
        return True

    fake.hook = drop
    client = make_client(reconnect=False)
    await client.connect()

    with pytest.raises(ConnectionLost):
        await client.publish("wedding:1", "message.posted", {})

    await until(lambda: client.state == "closed")
    assert len(fake.connections) == 1
    assert len(fake.of_type("publish")) == 1


# --- ping, keepalive, timeouts, the rest -------------------------------------------


async def test_ping__returns_round_trip_seconds(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client()
    await client.connect()

    rtt = await client.ping()

    assert 0 <= rtt < 1
    assert fake.of_type("ping")[0].keys() == {"type", "ref"}


async def test_request_timeout__raises_and_forgets_the_request(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    async def silent(ws: ServerConnection, frame: dict) -> bool:
        return True

    fake.hook = silent
    client = make_client(request_timeout=0.1)
    await client.connect()

    with pytest.raises(RequestTimeout) as err:
        await client.ping()

    assert isinstance(err.value, TimeoutError)
    assert err.value.code == "timeout"
    assert client._pending == {}


async def test_keepalive__pings_after_silence(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(keepalive_interval=0.05)
    await client.connect()

    await until(lambda: len(fake.of_type("ping")) >= 2)

    assert client.state == "live"


async def test_presence_ack_and_unsubscribe(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    async with make_client() as client:
        await client.subscribe("wedding:1")

        members = await client.presence("wedding:1")
        await client.ack("wedding:1", 3)
        await client.unsubscribe("wedding:1")

        assert members == [{"user_id": 7, "name": "Ana", "supplier_id": 3}]
        assert fake.of_type("ack")[0]["seq"] == 3
        assert fake.of_type("unsubscribe")[0]["topics"] == ["wedding:1"]
        assert client.last_seq("wedding:1") is None
    assert client.state == "closed"


async def test_wait_for_seq__times_out(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client()
    await client.connect()
    await client.subscribe("wedding:1")

    with pytest.raises(TimeoutError):
        await client.wait_for_seq("wedding:1", 1, timeout=0.05)

    assert client._streams.waiters.get("wedding:1", []) == []


async def test_close__fails_requests_waiting_for_a_connection(
    fake: FakeServer, make_client: Callable[..., RealtimeClient]
) -> None:
    client = make_client(backoff_max=1.0)
    await client.connect()
    await fake.close_all(4029)  # the client waits at least backoff_max / 2
    await until(lambda: client.state == "reconnecting")
    waiting = asyncio.ensure_future(client.ping())
    await asyncio.sleep(0.01)

    await client.close()

    with pytest.raises(ClientError):
        await waiting
    assert client.state == "closed"
