"""The Server-Sent Events stream (realtime/sse.py, PROTOCOL §11) through a real server
process: the WebSocket's order, replay, epochs, role matrix and withdrawal, and clear
HTTP errors for what it refuses.

A raw HTTP/1.1 client (h11) on purpose: these tests must see exactly what the server
writes, comments and ``id:`` lines included.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import h11
import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model

from core.cache import L2Cache, TwoTierCache
from realtime.epoch import EPOCH_KEY
from realtime.models import StreamEpoch
from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import Server
from weddings.models import Booking

pytestmark = [
    pytest.mark.redis,
    pytest.mark.usefixtures("redis_url"),
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(30),
]

HEARTBEAT_S = 0.5
# The stream epoch of every test here: each test's flush empties its table, and a fresh
# random one would look to the module's server like a bump (1012, ``realtime.epoch``).
EPOCH = "sse0test0epoch"
SERVER_NAMESPACE = f"test-sse-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Server]:
    """One server for the module, its own cache namespace, a short heartbeat."""
    running = Server(
        "uvicorn", CACHE_NAMESPACE=SERVER_NAMESPACE, REALTIME_SSE_HEARTBEAT=str(HEARTBEAT_S)
    )
    yield running
    running.stop()


class Sse:
    """One ``GET /sse/realtime/`` read as it arrives: the status, and for a stream each
    message (``id``, ``event``, ``data``) and comment."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.messages: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.ended = False
        self._buffer = ""
        self._task: asyncio.Task | None = None

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(65536)
            self.conn.receive_data(data)

    async def start(self) -> None:
        response = await self._next_event()
        assert isinstance(response, h11.Response), response
        self.status = response.status_code
        self.headers = {k.decode(): v.decode() for k, v in response.headers}
        if self.status != 200:
            while not isinstance(event := await self._next_event(), h11.EndOfMessage):
                if isinstance(event, h11.Data):
                    self.body += event.data
            self.writer.close()
            return
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    self._feed(event.data.decode())
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return
        finally:
            self.ended = True

    def _feed(self, text: str) -> None:
        self._buffer += text
        while "\n\n" in self._buffer:
            block, self._buffer = self._buffer.split("\n\n", 1)
            message: dict[str, Any] = {}
            for line in block.split("\n"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    self.comments.append(value)
                elif name == "data":
                    message["data"] = json.loads(value)
                else:
                    message[name] = value
            if message:
                self.messages.append(message)

    @property
    def error(self) -> dict[str, Any]:
        return json.loads(self.body)["error"]

    def frames(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            m["data"]
            for m in self.messages
            if "data" in m and "event" not in m and (kind is None or m["data"]["type"] == kind)
        ]

    def events(self) -> list[dict[str, Any]]:
        return self.frames("event")

    def close_notice(self) -> dict[str, Any] | None:
        return next((m["data"] for m in self.messages if m.get("event") == "close"), None)

    async def wait(self, condition: Callable[[], Any], timeout: float = 5) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    await asyncio.sleep(0.02)
        except TimeoutError:
            seen = [m.get("event") or m["data"].get("type") for m in self.messages]
            raise AssertionError(f"not within {timeout} s; received {seen}") from None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()


async def open_sse(
    server: Server,
    topics: dict[str, Any] | str | None,
    *,
    token: str | None = None,
    ticket: str | None = None,
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    method: str = "GET",
    port: int | None = None,
) -> Sse:
    query: dict[str, str] = {}
    if topics is not None:
        query["topics"] = topics if isinstance(topics, str) else json.dumps(topics)
    if token:
        query["token"] = token
    if ticket:
        query["ticket"] = ticket
    reader, writer = await asyncio.open_connection("127.0.0.1", port or server.port)
    sse = Sse(reader, writer)
    target = "/sse/realtime/?" + urllib.parse.urlencode(query)
    request = h11.Request(
        method=method,
        target=target,
        headers=[("Host", f"127.0.0.1:{port or server.port}"), *headers],
    )
    writer.write(sse.conn.send(request))
    writer.write(sse.conn.send(h11.EndOfMessage()))
    await sse.start()
    return sse


def _post(server: Server, path: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        return json.loads(response.read())


async def publish(server: Server, token: str, wedding_id: int, text: str) -> int:
    """A ``message.posted`` over the HTTP API, as the SSE client publishes; its seq."""
    body = {"event": "message.posted", "payload": {"text": text}}
    reply = await asyncio.to_thread(
        _post, server, f"/api/weddings/{wedding_id}/events", token, body
    )
    return reply["seq"]


@database_sync_to_async
def seed() -> dict[str, Any]:
    """A wedding with a planner and a photographer booked, its couple, and an outsider."""
    StreamEpoch.objects.update_or_create(pk=StreamEpoch.ROW, defaults={"epoch": EPOCH})
    # The server may have read (and made) a random one since the last flush: it drops it.
    cache = TwoTierCache(
        l1=None, l2=L2Cache(url=settings.REDIS_URL, ttl=60), namespace=SERVER_NAMESPACE
    )
    cache.delete(EPOCH_KEY)
    planner, photographer, couple, outsider = make_user(), make_user(), make_user(), make_user()
    wedding = make_wedding(couple=(couple,))
    make_booking(supplier=make_supplier(category="planner", users=(planner,)), wedding=wedding)
    photo_co = make_supplier(users=(photographer,))
    make_booking(supplier=photo_co, wedding=wedding)
    users = {"planner": planner, "photographer": photographer, "couple": couple}
    return {
        "wedding": wedding,
        "topic": wedding.topic,
        "photo_co": photo_co,
        "users": {**users, "outsider": outsider},
        "tokens": {
            name: token_issue(user=u) for name, u in {**users, "outsider": outsider}.items()
        },
        "epoch": EPOCH,
    }


# --- order, ids, heartbeats, the couple's view ------------------------------------------


async def test_stream__reply_first_then_live_events_in_order_with_positions(server):
    # given a vendor's stream and the couple's
    w = await seed()
    topic, wid, epoch = w["topic"], w["wedding"].id, w["epoch"]
    sse = await open_sse(server, {topic: {}}, token=w["tokens"]["photographer"])
    couple = await open_sse(server, {topic: {}}, token=w["tokens"]["couple"])
    try:
        assert sse.status == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        await sse.wait(lambda: sse.messages)
        first = sse.messages[0]
        assert first["data"]["type"] == "reply" and first["data"]["status"] == "ok"
        assert first["data"]["topics"][topic] == {"status": "ok", "seq": 0, "epoch": epoch}
        assert first["id"] == f"{epoch}.0"

        # when a planner publishes over the HTTP API
        seqs = [await publish(server, w["tokens"]["planner"], wid, f"m{n}") for n in range(20)]

        # then every event comes once, in order, each with the stream's position
        await sse.wait(lambda: len(sse.events()) == 20)
        assert [e["seq"] for e in sse.events()] == seqs == list(range(1, 21))
        assert [e["payload"]["text"] for e in sse.events()] == [f"m{n}" for n in range(20)]
        ids = [m["id"] for m in sse.messages if "data" in m and m["data"]["type"] == "event"]
        assert ids == [f"{epoch}.{n}" for n in range(1, 21)]
        # and the couple get the run-sheet view: placeholders with the same seqs
        await couple.wait(lambda: len(couple.events()) == 20)
        assert {(e["event"], str(e["payload"])) for e in couple.events()} == {("hidden", "{}")}
        assert [e["seq"] for e in couple.events()] == seqs
        # and heartbeat comments keep an idle stream moving
        await sse.wait(lambda: "keep-alive" in sse.comments, timeout=HEARTBEAT_S * 6)
    finally:
        sse.close()
        couple.close()


# --- since, recovered, Last-Event-ID ---------------------------------------------------------


async def test_since__replays_the_missed_events_then_live_and_says_recovered(server):
    w = await seed()
    topic, wid, epoch, token = w["topic"], w["wedding"].id, w["epoch"], w["tokens"]["planner"]
    for n in range(5):
        await publish(server, token, wid, f"m{n}")

    sse = await open_sse(server, {topic: {"since": 2, "epoch": epoch}}, token=token)
    try:
        await sse.wait(lambda: len(sse.events()) == 3)
        reply = sse.frames("reply")[0]
        assert reply["topics"][topic] == {
            "status": "ok",
            "seq": 5,
            "recovered": True,
            "epoch": epoch,
        }
        assert sse.messages[0]["id"] == f"{epoch}.2"  # the position the replay starts after
        await publish(server, token, wid, "live")
        await sse.wait(lambda: len(sse.events()) == 4)
        assert [e["seq"] for e in sse.events()] == [3, 4, 5, 6]
    finally:
        sse.close()

    # Another history's position, or one ahead of the topic: nothing replayed, from now.
    for options in ({"since": 1, "epoch": "another"}, {"since": 99, "epoch": epoch}):
        sse = await open_sse(server, {topic: options}, token=token)
        try:
            await sse.wait(lambda s=sse: s.messages)
            status = sse.frames("reply")[0]["topics"][topic]
            seq = status["seq"]
            assert status == {"status": "ok", "seq": seq, "recovered": False, "epoch": epoch}
            assert sse.messages[0]["id"] == f"{epoch}.{seq}"
            await publish(server, token, wid, "next")
            await sse.wait(lambda s=sse: s.events())
            assert [e["seq"] for e in sse.events()] == [seq + 1]
        finally:
            sse.close()


async def test_last_event_id__resumes_every_topic_where_the_browser_left_off(server):
    w = await seed()
    topic, wid, epoch = w["topic"], w["wedding"].id, w["epoch"]
    supplier_topic = f"supplier:{w['photo_co'].id}"
    for n in range(4):
        await publish(server, w["tokens"]["planner"], wid, f"m{n}")
    topics = {topic: {}, supplier_topic: {}}  # the URL's own positions: none
    # Topics in the id are in the order of their names: supplier:…, then wedding:….
    last_id = f"{epoch}.-.1"

    sse = await open_sse(
        server, topics, token=w["tokens"]["photographer"], headers=[("Last-Event-ID", last_id)]
    )
    try:
        await sse.wait(lambda: len(sse.events()) == 3)
        reply = sse.frames("reply")[0]
        assert reply["topics"][topic]["recovered"] is True
        assert "recovered" not in reply["topics"][supplier_topic]  # no position: from now
        assert [e["seq"] for e in sse.events()] == [2, 3, 4]
        assert [m["id"] for m in sse.messages if "id" in m][-1] == f"{epoch}.0.4"
    finally:
        sse.close()


async def test_restart__a_stream_ended_by_its_server_resumes_on_another_without_loss(server):
    # given a stream on a second server process that gets a few events
    w = await seed()
    topic, wid, token = w["topic"], w["wedding"].id, w["tokens"]["photographer"]
    other = await asyncio.to_thread(Server, "uvicorn", CACHE_NAMESPACE=f"t-{uuid.uuid4().hex}")
    try:
        sse = await open_sse(other, {topic: {}}, token=token)
        for n in range(3):
            await publish(server, w["tokens"]["planner"], wid, f"before{n}")
        await sse.wait(lambda: len(sse.events()) == 3)
        # when that process restarts (SIGTERM: drain) while events keep coming
        await asyncio.to_thread(other.stop)
        await sse.wait(lambda: sse.ended)
    finally:
        await asyncio.to_thread(other.stop)
    assert sse.close_notice() == {"code": 1012, "reason": "server restarting; reconnect"}
    last_id = [m["id"] for m in sse.messages if "id" in m][-1]
    for n in range(4):
        await publish(server, w["tokens"]["planner"], wid, f"during{n}")

    # then the browser's reconnect with its Last-Event-ID misses nothing and repeats nothing
    again = await open_sse(server, {topic: {}}, token=token, headers=[("Last-Event-ID", last_id)])
    try:
        await again.wait(lambda: len(again.events()) == 4)
        assert again.frames("reply")[0]["topics"][topic]["recovered"] is True
        seqs = [e["seq"] for e in sse.events() + again.events()]
        assert seqs == list(range(1, 8))
    finally:
        again.close()


# --- withdrawal -----------------------------------------------------------------------------


async def test_withdrawn__booking_ends_the_stream_password_change_closes_4001(server):
    w = await seed()
    vendor = await open_sse(server, {w["topic"]: {}}, token=w["tokens"]["photographer"])
    planner = await open_sse(server, {w["topic"]: {}}, token=w["tokens"]["planner"])
    try:
        await vendor.wait(lambda: vendor.messages)
        await planner.wait(lambda: planner.messages)

        # A booking deleted: the topic is withdrawn, and with it the stream's last topic.
        await database_sync_to_async(lambda: Booking.objects.get(supplier=w["photo_co"]).delete())()

        await vendor.wait(lambda: vendor.ended)
        notice = vendor.frames("unsubscribed")[0]
        assert (notice["topic"], notice["code"]) == (w["topic"], "forbidden")
        assert vendor.close_notice()["code"] == 1000
        assert not planner.ended and not planner.frames("unsubscribed")

        # A password changed: credentials withdrawn, the stream ends as a socket would (4001).
        @database_sync_to_async
        def change_password() -> None:
            user = get_user_model().objects.get(pk=w["users"]["planner"].pk)
            user.set_password("a-new-password")
            user.save()

        await change_password()
        await planner.wait(lambda: planner.ended)
        assert planner.close_notice() == {"code": 4001, "reason": "credentials withdrawn"}
    finally:
        vendor.close()
        planner.close()


# --- credentials and bad input ----------------------------------------------------------------


async def test_credentials__bearer_and_single_use_ticket(server):
    w = await seed()
    headers = [("Authorization", f"Bearer {w['tokens']['planner']}")]
    sse = await open_sse(server, {w["topic"]: {}}, headers=headers)
    try:
        await sse.wait(lambda: sse.messages)
        assert sse.frames("reply")[0]["status"] == "ok"
    finally:
        sse.close()
    ticket = await asyncio.to_thread(
        _post, server, "/api/realtime/ticket", w["tokens"]["planner"], {}
    )
    sse = await open_sse(server, {w["topic"]: {}}, ticket=ticket["ticket"])
    try:
        assert sse.status == 200
    finally:
        sse.close()
    again = await open_sse(server, {w["topic"]: {}}, ticket=ticket["ticket"])
    assert (again.status, again.error["code"]) == (401, "unauthenticated")


BAD_TOPICS = [
    (None, "bad_request", "topics"),
    ("not json", "bad_request", "topics"),
    ('["wedding:1"]', "invalid_payload", "topics"),
    ('{"wedding:1":{"since":-1}}', "invalid_payload", "topics.wedding:1.since"),
    ('{"wedding:1":{"sinse":1}}', "invalid_payload", "topics.wedding:1.sinse"),
    ('{"wedding:1":{"since":1,"epoch":"a b"}}', "invalid_payload", "topics.wedding:1.epoch"),
    ("{}", "invalid_payload", "topics"),
    (json.dumps({f"wedding:{n}": {} for n in range(1, 102)}), "invalid_payload", "topics"),
]


async def test_refusals__clear_http_errors_never_a_stream(server):
    w = await seed()
    token = w["tokens"]["planner"]
    for topics, code, field in BAD_TOPICS:
        sse = await open_sse(server, topics, token=token)
        assert (sse.status, sse.error["code"], sse.error.get("field")) == (400, code, field), topics
    topics = {w["topic"]: {}}
    cases = [
        (await open_sse(server, topics), 401, "unauthenticated"),
        (await open_sse(server, topics, token="not-a-token"), 401, "unauthenticated"),
        (await open_sse(server, topics, token=w["tokens"]["outsider"]), 404, "forbidden"),
        (await open_sse(server, '{"wedding:01":{}}', token=token), 404, "unknown_topic"),
        (await open_sse(server, topics, token=token, method="POST"), 405, "method_not_allowed"),
        (
            await open_sse(server, topics, token=token, headers=[("Origin", "https://evil.test")]),
            403,
            "forbidden",
        ),
        (
            await open_sse(server, topics, token=token, headers=[("Last-Event-ID", "abc.1.2")]),
            400,
            "bad_request",
        ),
        (await open_sse(server, "x" * 20_000, token=token), 414, "bad_request"),
    ]
    for sse, status, code in cases:
        assert (sse.status, sse.error["code"]) == (status, code), sse.body
        assert sse.headers["content-type"] == "application/json"
