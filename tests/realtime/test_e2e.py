"""End to end: two daphne processes sharing Redis and the database, real WebSocket clients.

Raw ``websockets`` connections on purpose: the project's client drops duplicates, and
these tests must see exactly what the servers send.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any
from unittest.mock import ANY

import orjson
import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import connect

from realtime.models import Event
from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import Server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
]

PUBLISHERS = 4
EVENTS = 200
# 1,500 × 4 KB = 6 MB: more than the kernel's and the server's socket buffers together.
STUCK_EVENTS = 1500


@pytest.fixture
def servers(request, redis_url):
    kinds = getattr(request, "param", ("uvicorn", "uvicorn"))
    # The publishers send back to back, past the default per-connection and per-user
    # rates on a fast machine; the rate limits are not what these tests are about.
    fast = {
        "REALTIME_PUBLISH_RATE": "1000", "REALTIME_PUBLISH_BURST": "1000",
        "REALTIME_USER_PUBLISH_RATE": "1000", "REALTIME_USER_PUBLISH_BURST": "1000",
        "REALTIME_FRAME_RATE": "10000", "REALTIME_FRAME_BURST": "10000",
        "REALTIME_USER_FRAME_RATE": "10000", "REALTIME_USER_FRAME_BURST": "10000",
        "REALTIME_USER_PUBLISH_BYTES_RATE": "100000000",
        "REALTIME_USER_PUBLISH_BYTES_BURST": "100000000",
    }  # fmt: skip
    running = [Server(kind, **fast) for kind in kinds]
    yield running
    for server in running:
        server.stop()


class Ws:
    """One raw connection with request/reply by ref and a list of received events."""

    _refs = itertools.count(1)

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict] = []
        self.others: list[dict] = []  # frames that are neither events nor awaited replies
        self.replies: dict[str, asyncio.Future] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = orjson.loads(raw)
            if frame["type"] == "event":
                self.events.append(frame)
            elif frame.get("ref") in self.replies:
                self.replies.pop(frame["ref"]).set_result(frame)
            else:
                self.others.append(frame)

    async def request(self, frame: dict) -> dict:
        ref = str(next(self._refs))
        future = asyncio.get_running_loop().create_future()
        self.replies[ref] = future
        await self.ws.send(orjson.dumps({**frame, "ref": ref}).decode())
        return await asyncio.wait_for(future, 15)

    async def wait_events(self, count: int, timeout: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.events) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


async def open_ws(server: Server, token: str) -> Ws:
    return Ws(await connect(f"{server.ws_url}?token={token}"))


@database_sync_to_async
def seed() -> dict[str, Any]:
    wedding = make_wedding()
    users = [make_user() for _ in range(PUBLISHERS + 2)]
    for user in users:
        make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
    return {
        "topic": wedding.topic,
        "tokens": [token_issue(user=u) for u in users],
    }


@pytest.mark.parametrize(
    "servers", [("uvicorn", "uvicorn"), ("uvicorn", "daphne")], indirect=True, ids=str
)
async def test_two_processes__every_subscriber_gets_1_to_200_once_in_order(servers):
    # given subscribers on both processes
    world = await seed()
    topic = world["topic"]
    subscribers = []
    for i, server in enumerate(servers * 2):
        ws = await open_ws(server, world["tokens"][i])
        reply = await ws.request({"type": "subscribe", "topics": {topic: {}}})
        assert reply["topics"][topic]["status"] == "ok"
        subscribers.append(ws)

    # when 4 publishers, two per process, send 200 events concurrently
    async def publish(index: int) -> list[int]:
        ws = await open_ws(servers[index % 2], world["tokens"][index])
        seqs = []
        for n in range(EVENTS // PUBLISHERS):
            reply = await ws.request(
                {
                    "type": "publish",
                    "topic": topic,
                    "event": "message.posted",
                    "payload": {"text": f"{index}-{n}"},
                }
            )
            assert reply["status"] == "ok", reply
            seqs.append(reply["seq"])
        await ws.close()
        return seqs

    published = await asyncio.gather(*(publish(i) for i in range(PUBLISHERS)))

    # then the seqs are exactly 1..200, and every subscriber got each once, in order
    assert sorted(itertools.chain(*published)) == list(range(1, EVENTS + 1))
    for ws in subscribers:
        await ws.wait_events(EVENTS)
        assert [e["seq"] for e in ws.events] == list(range(1, EVENTS + 1))
        await ws.close()
    assert await database_sync_to_async(Event.objects.filter(topic=topic).count)() == EVENTS


async def test_replay_after_disconnect__missed_events_then_live(servers):
    world = await seed()
    topic = world["topic"]
    writer = await open_ws(servers[0], world["tokens"][0])

    async def post(text: str) -> int:
        reply = await writer.request(
            {
                "type": "publish",
                "topic": topic,
                "event": "message.posted",
                "payload": {"text": text},
            }
        )
        return reply["seq"]

    # given a reader on the other process that saw the first two events, then dropped
    reader = await open_ws(servers[1], world["tokens"][1])
    await reader.request({"type": "subscribe", "topics": {topic: {}}})
    await post("a")
    await post("b")
    await reader.wait_events(2)
    assert [e["seq"] for e in reader.events] == [1, 2]
    await reader.close()
    # when three more are published while it is away and it comes back with since=2
    for text in "cde":
        await post(text)
    back = await open_ws(servers[1], world["tokens"][1])
    reply = await back.request({"type": "subscribe", "topics": {topic: {"since": 2}}})
    assert reply["topics"][topic] == {"status": "ok", "seq": 5, "recovered": True, "epoch": ANY}
    await post("f")
    # then it gets exactly 3, 4, 5 and then the live 6
    await back.wait_events(4)
    assert [e["seq"] for e in back.events] == [3, 4, 5, 6]
    assert [e["payload"]["text"] for e in back.events] == ["c", "d", "e", "f"]
    await back.close()
    await writer.close()


async def test_idempotent_retry_across_processes__stores_one_event(servers):
    world = await seed()
    topic = world["topic"]
    frame = {
        "type": "publish",
        "topic": topic,
        "event": "message.posted",
        "payload": {"text": "once"},
        "idempotency_key": "retry-after-drop-1",
    }
    first = await open_ws(servers[0], world["tokens"][0])
    one = await first.request(frame)
    await first.close()
    # the same user retries on the other process after a connection loss
    second = await open_ws(servers[1], world["tokens"][0])
    two = await second.request(frame)
    await second.close()
    assert one["seq"] == two["seq"] == 1
    assert two.get("duplicate") is True
    assert await database_sync_to_async(Event.objects.filter(topic=topic).count)() == 1


async def test_access_withdrawn__connections_on_both_processes_dropped(servers):
    # given one user subscribed on both processes, and a second user on both (the
    # notices reach the processes through their hubs: connections have no layer channel)
    world = await seed()
    topic = world["topic"]
    kept = [await open_ws(server, world["tokens"][0]) for server in servers]
    revoked = [await open_ws(server, world["tokens"][1]) for server in servers]
    for ws in kept + revoked:
        reply = await ws.request({"type": "subscribe", "topics": {topic: {}}})
        assert reply["topics"][topic]["status"] == "ok"

    # when the first user's booking is deactivated (its only access to the wedding)
    @database_sync_to_async
    def unbook_and_deactivate() -> None:
        from django.contrib.auth import get_user_model

        from realtime.tokens import token_authenticate
        from weddings.models import Booking, SupplierMembership

        first = token_authenticate(world["tokens"][0])
        supplier_id = SupplierMembership.objects.get(user=first).supplier_id
        # (a booking saved inactive, as the admin does)
        booking = Booking.objects.get(supplier_id=supplier_id, wedding_id=int(topic.split(":")[1]))
        booking.active = False
        booking.save()
        # and the second user is deactivated
        second = get_user_model().objects.get(pk=token_authenticate(world["tokens"][1]).pk)
        second.is_active = False
        second.save(update_fields=["is_active"])

    await unbook_and_deactivate()

    # then the first user's subscription ends on both processes, the connections stay
    for ws in kept:
        notice = await asyncio.wait_for(_next_of_type(ws, "unsubscribed"), 10)
        assert notice["topic"] == topic and notice["code"] == "forbidden"
        assert (await ws.request({"type": "ping"}))["type"] == "pong"
    # and the second user's connections are closed with 4001 on both processes
    for ws in revoked:
        await asyncio.wait_for(ws.ws.wait_closed(), 10)
        assert ws.ws.close_code == 4001
        await asyncio.gather(ws.reader, return_exceptions=True)  # it ended with the close
    for ws in kept:
        await ws.close()


async def _next_of_type(ws: Ws, kind: str) -> dict:
    while True:
        for frame in ws.others:
            if frame["type"] == kind:
                ws.others.remove(frame)
                return frame
        await asyncio.sleep(0.05)


@pytest.mark.timeout(240)
async def test_stuck_client__closed_1013_while_others_get_everything(redis_url):
    # given a server with a small outbox, a healthy subscriber and one that stops reading
    import socket

    server = Server(
        "uvicorn",
        REALTIME_OUTBOX_SIZE="16",
        REALTIME_PUBLISH_RATE="10000",
        REALTIME_PUBLISH_BURST="10000",
        REALTIME_USER_PUBLISH_RATE="10000",
        REALTIME_USER_PUBLISH_BURST="10000",
        REALTIME_FRAME_RATE="10000",
        REALTIME_FRAME_BURST="10000",
        REALTIME_USER_FRAME_RATE="10000",
        REALTIME_USER_FRAME_BURST="10000",
        REALTIME_USER_PUBLISH_BYTES_RATE="100000000",
        REALTIME_USER_PUBLISH_BYTES_BURST="100000000",
    )
    try:
        world = await seed()
        topic = world["topic"]
        healthy = await open_ws(server, world["tokens"][0])
        await healthy.request({"type": "subscribe", "topics": {topic: {}}})
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        # no permessage-deflate (the server accepts it, ADR 0034): the repeated text would
        # compress to nothing and never fill the buffers of a client that reads nothing
        stuck = await connect(
            f"{server.ws_url}?token={world['tokens'][1]}", sock=sock, max_queue=1, compression=None
        )
        await stuck.send(
            orjson.dumps({"type": "subscribe", "ref": "s", "topics": {topic: {}}}).decode()
        )
        # when more is published than the socket buffers hold (the server's kernel send
        # buffer grows to 4 MB) and the stuck client reads nothing
        writer = await open_ws(server, world["tokens"][2])
        for n in range(STUCK_EVENTS):
            reply = await writer.request(
                {
                    "type": "publish",
                    "topic": topic,
                    "event": "message.posted",
                    "payload": {"text": f"{n} " + "x" * 3990},
                }
            )
            assert reply["status"] == "ok"
        # then the healthy subscriber has them all, in order
        await healthy.wait_events(STUCK_EVENTS, timeout=90)
        assert [e["seq"] for e in healthy.events] == list(range(1, STUCK_EVENTS + 1))
        # and the stuck one, once it reads again, finds its stream cut with 1013
        received = 0
        with pytest.raises(Exception) as closed:  # ConnectionClosed* variants
            while True:
                frame = orjson.loads(await asyncio.wait_for(stuck.recv(), 30))
                received += frame["type"] == "event"
        assert stuck.close_code == 1013, (closed.value, received)
        assert received < STUCK_EVENTS
        await healthy.close()
        await writer.close()
    finally:
        server.stop()


async def test_python_client__survives_a_server_crash_exactly_once_in_order(servers):
    # given the project's client on server A, subscribed, having seen 3 events
    from wedsync_client.client import RealtimeClient

    world = await seed()
    topic = world["topic"]
    received: list[int] = []
    a, b = servers
    client = RealtimeClient(
        a.ws_url,
        token=world["tokens"][0],
        on_event=lambda e: received.append(e["seq"]),
        backoff_initial=0.1,
        backoff_max=0.5,
    )
    await client.connect()
    await client.subscribe(topic)
    writer = await open_ws(b, world["tokens"][1])

    async def post(text: str) -> None:
        reply = await writer.request(
            {
                "type": "publish",
                "topic": topic,
                "event": "message.posted",
                "payload": {"text": text},
            }
        )
        assert reply["status"] == "ok"

    for text in "abc":
        await post(text)
    await client.wait_for_seq(topic, 3, timeout=10)
    # when server A crashes, two events are published meanwhile, and A comes back
    port = a.port
    a.kill()
    await post("d")
    await post("e")
    servers[0] = Server("uvicorn", port=port)
    await client.wait_for_seq(topic, 5, timeout=30)
    await post("f")
    await client.wait_for_seq(topic, 6, timeout=10)
    # then the client delivered every event exactly once, in order
    assert received == [1, 2, 3, 4, 5, 6]
    await client.close()
    await writer.close()
