"""The WebSocket consumer, frame by frame, through the real ASGI application.

The channel layer is the configured one (Redis in CI), the database is real; each test
disconnects every communicator it opened.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from unittest.mock import ANY

import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from realtime.models import Event
from realtime.tokens import token_issue
from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from wedsync.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")  # a browser's handshake: its Origin is the Host's origin


class Conn:
    """A communicator with JSON helpers.

    Frames read while waiting for something else (a reply, a frame of one type) are kept
    in ``backlog`` and handed out first by ``recv``: nothing the server sent is skipped.
    """

    def __init__(self, comm: WebsocketCommunicator) -> None:
        self.comm = comm
        self.refs = 0
        self.backlog: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.comm.send_to(text_data=orjson.dumps(frame).decode())

    async def _read(self, timeout: float) -> dict[str, Any]:
        return orjson.loads(await self.comm.receive_from(timeout))

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        return await self._read(timeout)

    async def _take(self, match: Any, timeout: float) -> dict[str, Any]:
        for index, frame in enumerate(self.backlog):
            if match(frame):
                return self.backlog.pop(index)
        while True:
            frame = await self._read(timeout)
            if match(frame):
                return frame
            self.backlog.append(frame)

    async def recv_type(self, kind: str, timeout: float = 5) -> dict[str, Any]:
        return await self._take(lambda f: f["type"] == kind, timeout)

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        self.refs += 1
        ref = str(self.refs)
        await self.send({**frame, "ref": ref})
        return await self._take(lambda f: f.get("ref") == ref and f["type"] in {"reply", "pong"}, 5)

    async def events(self, count: int) -> list[dict[str, Any]]:
        return [await self.recv_type("event") for _ in range(count)]

    async def nothing(self) -> bool:
        return not self.backlog and await self.comm.receive_nothing(0.3)


@pytest.fixture
async def opened():
    conns: list[WebsocketCommunicator] = []

    async def open_(
        *, user: Any = None, token: str | None = None, headers: list | None = None
    ) -> tuple[Conn, bool, int | None]:
        path = "/ws/realtime/"
        if user is not None:
            token = await database_sync_to_async(token_issue)(user=user)
        if token is not None:
            path += f"?token={token}"
        comm = WebsocketCommunicator(application, path, headers=headers or [])
        conns.append(comm)
        connected, code = await comm.connect(timeout=5)
        return Conn(comm), connected, code

    yield open_
    for comm in conns:
        await comm.disconnect()


@database_sync_to_async
def world() -> dict[str, Any]:
    """Two weddings; a planner and a photographer on A, a vendor on B, a couple, staff."""
    planner, photographer, other = make_user(), make_user(), make_user()
    couple, staff = make_user(), make_user(is_staff=True)
    wedding_a, wedding_b = make_wedding(couple=(couple,)), make_wedding()
    planner_co = make_supplier(category="planner", users=(planner,))
    photo_co = make_supplier(category="photographer", users=(photographer,))
    other_co = make_supplier(category="florist", users=(other,))
    make_booking(supplier=planner_co, wedding=wedding_a)
    make_booking(supplier=photo_co, wedding=wedding_a)
    make_booking(supplier=other_co, wedding=wedding_b)
    item = make_item(wedding=wedding_a, title="Ceremony", start=(14, 0))
    return {
        "planner": planner,
        "photographer": photographer,
        "other": other,
        "couple": couple,
        "staff": staff,
        "a": wedding_a,
        "b": wedding_b,
        "photo_co": photo_co,
        "item": item,
    }


async def test_connect__without_credentials_closes_4001(opened):
    conn, connected, _ = await opened()
    assert connected
    out = await conn.comm.receive_output(5)
    assert out == {"type": "websocket.close", "code": 4001, "reason": "authentication required"}


async def test_connect__bad_token_closes_4001(opened):
    conn, connected, _ = await opened(token="not-a-token")
    assert connected
    out = await conn.comm.receive_output(5)
    assert out["type"] == "websocket.close" and out["code"] == 4001


async def test_connect__foreign_origin_is_refused_at_handshake(opened):
    w = await world()
    _, connected, _ = await opened(user=w["planner"], headers=[(b"origin", b"https://evil.test")])
    assert not connected


async def test_connect__session_cookie_without_origin_is_not_enough(opened):
    w = await world()
    client = Client()
    await database_sync_to_async(client.force_login)(w["planner"])
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    conn, connected, _ = await opened(headers=[(b"cookie", cookie)])
    assert connected
    assert (await conn.comm.receive_output(5))["code"] == 4001


async def test_connect__session_cookie_with_allowed_origin_authenticates(opened):
    w = await world()
    client = Client()
    await database_sync_to_async(client.force_login)(w["planner"])
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    conn, connected, _ = await opened(headers=[(b"cookie", cookie), ORIGIN, HOST])
    assert connected
    assert (await conn.request({"type": "ping"}))["type"] == "pong"


async def test_connect__session_of_a_changed_password_closes_4001(opened):
    # given a browser session, then the user's password changes (Django's session hash)
    w = await world()
    client = Client()
    await database_sync_to_async(client.force_login)(w["planner"])
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    @database_sync_to_async
    def change_password() -> None:
        w["planner"].set_password("a new one")
        w["planner"].save()

    await change_password()
    # when it connects with that session
    conn, connected, _ = await opened(headers=[(b"cookie", cookie), ORIGIN, HOST])
    # then it is not authenticated
    assert connected
    assert (await conn.comm.receive_output(5))["code"] == 4001


async def test_connect__other_path_is_refused_at_handshake():
    w = await world()
    token = await database_sync_to_async(token_issue)(user=w["planner"])
    comm = WebsocketCommunicator(application, f"/ws/other/?token={token}")
    connected, _ = await comm.connect(timeout=5)
    assert not connected
    await comm.disconnect()


async def test_ping__answers_pong_with_ref(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    await conn.send({"type": "ping", "ref": "abc"})
    assert await conn.recv() == {"type": "pong", "ref": "abc"}


async def test_subscribe__allowed_forbidden_unknown_and_nonexistent(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    reply = await conn.request(
        {
            "type": "subscribe",
            "topics": {
                w["a"].topic: {},
                w["b"].topic: {},
                "wedding:99999999": {},
                "nonsense": {},
                "ops": {},
            },
        }
    )
    topics = reply["topics"]
    assert reply["status"] == "ok"
    assert topics[w["a"].topic] == {"status": "ok", "seq": 0, "epoch": ANY}
    assert topics[w["b"].topic]["code"] == "forbidden"
    assert topics["ops"]["code"] == "forbidden"
    assert topics["nonsense"]["code"] == "unknown_topic"
    # a wedding that does not exist looks exactly like one the user may not see
    assert topics["wedding:99999999"] == {
        **topics[w["b"].topic],
        "message": topics["wedding:99999999"]["message"],
    }
    assert topics["wedding:99999999"]["message"].replace("99999999", "X") == topics[w["b"].topic][
        "message"
    ].replace(str(w["b"].pk), "X")


async def test_publish__stores_then_broadcasts_to_every_subscriber_in_order(opened):
    # given two subscribers of wedding A
    w = await world()
    topic = w["a"].topic
    planner, _, _ = await opened(user=w["planner"])
    photographer, _, _ = await opened(user=w["photographer"])
    for conn in (planner, photographer):
        await conn.request({"type": "subscribe", "topics": {topic: {}}})
    # when the photographer publishes three messages
    for i in range(3):
        reply = await photographer.request(
            {
                "type": "publish",
                "topic": topic,
                "event": "message.posted",
                "payload": {"text": f"hello {i}"},
            }
        )
        assert reply["status"] == "ok" and reply["seq"] == i + 1
    # then both receive seq 1..3 in order, the publisher included
    for conn in (planner, photographer):
        events = await conn.events(3)
        assert [e["seq"] for e in events] == [1, 2, 3]
        assert [e["payload"]["text"] for e in events] == ["hello 0", "hello 1", "hello 2"]
        assert events[0]["actor"]["user_id"] == w["photographer"].pk
    assert await database_sync_to_async(Event.objects.filter(topic=topic).count)() == 3


async def test_publish__forbidden_topic_stores_nothing(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    reply = await conn.request(
        {
            "type": "publish",
            "topic": w["b"].topic,
            "event": "message.posted",
            "payload": {"text": "hi"},
        }
    )
    assert reply["status"] == "error" and reply["code"] == "forbidden"
    assert await database_sync_to_async(Event.objects.count)() == 0


async def test_publish__invalid_payload_names_the_field(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    reply = await conn.request(
        {"type": "publish", "topic": w["a"].topic, "event": "message.posted", "payload": {}}
    )
    assert reply["code"] == "invalid_payload"
    assert reply["field"].endswith("text")
    assert await database_sync_to_async(Event.objects.count)() == 0


async def test_publish__same_idempotency_key_returns_first_seq(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    frame = {
        "type": "publish",
        "topic": w["a"].topic,
        "event": "message.posted",
        "payload": {"text": "once"},
        "idempotency_key": "k-1",
    }
    first = await conn.request(frame)
    second = await conn.request(frame)
    assert first["seq"] == second["seq"] == 1
    assert second.get("duplicate") is True
    assert await database_sync_to_async(Event.objects.count)() == 1


async def test_publish__stale_timeline_version_gets_conflict_with_current_item(opened):
    w = await world()
    conn, _, _ = await opened(user=w["planner"])
    item = w["item"]
    frame = {
        "type": "publish",
        "topic": w["a"].topic,
        "event": "timeline.item.updated",
        "payload": {"id": item.pk, "version": item.version, "title": "Vows"},
    }
    ok = await conn.request(frame)
    assert ok["status"] == "ok"
    stale = await conn.request(frame)
    assert stale["code"] == "conflict"
    assert stale["current"]["title"] == "Vows" and stale["current"]["version"] == 2


async def test_subscribe_since__replays_missed_events_then_continues_live(opened):
    # given three events already stored
    w = await world()
    topic = w["a"].topic
    writer, _, _ = await opened(user=w["planner"])
    for i in range(3):
        await writer.request(
            {
                "type": "publish",
                "topic": topic,
                "event": "message.posted",
                "payload": {"text": str(i)},
            }
        )
    # when a client that saw seq 1 subscribes with since=1
    reader, _, _ = await opened(user=w["photographer"])
    reply = await reader.request({"type": "subscribe", "topics": {topic: {"since": 1}}})
    # then it gets seq 3 as current, recovered, and events 2 and 3, then live ones
    assert reply["topics"][topic] == {"status": "ok", "seq": 3, "recovered": True, "epoch": ANY}
    assert [e["seq"] for e in await reader.events(2)] == [2, 3]
    await writer.request(
        {"type": "publish", "topic": topic, "event": "message.posted", "payload": {"text": "x"}}
    )
    assert (await reader.recv_type("event"))["seq"] == 4


async def test_subscribe_since__beyond_current_seq_is_not_recovered(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    reply = await conn.request({"type": "subscribe", "topics": {w["a"].topic: {"since": 50}}})
    assert reply["topics"][w["a"].topic] == {
        "status": "ok", "seq": 0, "recovered": False, "epoch": ANY,
    }  # fmt: skip


async def test_bad_frames__get_bad_frame_and_the_connection_stays_usable(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    await conn.comm.send_to(text_data="not json")
    assert (await conn.recv())["code"] == "bad_frame"
    await conn.comm.send_to(bytes_data=b"\x00\x01")
    assert (await conn.recv())["code"] == "bad_frame"
    await conn.send({"type": "ping", "ref": "x" * 40})
    frame = await conn.recv()
    assert frame == {**frame, "type": "error", "code": "bad_frame"} and "ref" not in frame
    await conn.send({"type": "launch", "ref": "1"})
    assert (await conn.recv())["code"] == "bad_frame"
    await conn.send({"type": "ack", "ref": "2", "topic": w["a"].topic, "seq": "x"})
    reply = await conn.recv()
    assert reply["ref"] == "2" and reply["code"] == "invalid_payload"
    assert (await conn.request({"type": "ping"}))["type"] == "pong"


async def test_too_large_frame__error_then_close_4009(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    await conn.comm.send_to(text_data='{"type":"ping","ref":"1","pad":"' + "x" * 70000 + '"}')
    assert (await conn.recv())["code"] == "too_large"
    out = await conn.comm.receive_output(5)
    assert out["type"] == "websocket.close" and out["code"] == 4009


async def test_rate_limit__a_critical_event_passes_when_the_normal_budget_is_spent(
    opened, settings
):
    settings.REALTIME_PUBLISH_RATE = 1.0
    settings.REALTIME_PUBLISH_BURST = 2
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    topic = w["a"].topic
    codes = []
    for i in range(4):
        reply = await conn.request(
            {
                "type": "publish",
                "topic": topic,
                "event": "message.posted",
                "payload": {"text": str(i)},
            }
        )
        codes.append(reply.get("code", "ok"))
    assert codes[:2] == ["ok", "ok"] and "rate_limited" in codes[2:]
    reply = await conn.request(
        {
            "type": "publish",
            "topic": topic,
            "event": "emergency.raised",
            "payload": {"kind": "medical", "text": "Guest fainted"},
        }
    )
    assert reply["status"] == "ok"


@pytest.mark.django_db(transaction=True)
def test_member_infos__card_follows_a_new_booking_of_the_users_supplier():
    # given a couple member who also works for a supplier not booked on their wedding
    from realtime.access import member_infos

    user = make_user()
    wedding = make_wedding(couple=(user,))
    supplier = make_supplier(users=(user,))
    assert member_infos(user, [wedding.topic])[wedding.topic]["supplier_id"] is None
    # when the supplier is booked (the cached booked suppliers of the wedding are dropped)
    make_booking(supplier=supplier, wedding=wedding)
    # then the card names it
    assert member_infos(user, [wedding.topic])[wedding.topic]["supplier_id"] == supplier.pk


async def test_presence__join_diff_and_members(opened):
    w = await world()
    topic = w["a"].topic
    planner, _, _ = await opened(user=w["planner"])
    await planner.request({"type": "subscribe", "topics": {topic: {}}})
    photographer, _, _ = await opened(user=w["photographer"])
    await photographer.request({"type": "subscribe", "topics": {topic: {}}})
    diff = await planner.recv_type("presence_diff")
    while w["photographer"].pk not in [j["user_id"] for j in diff["joins"]]:
        diff = await planner.recv_type("presence_diff")
    assert diff["topic"] == topic
    reply = await planner.request({"type": "presence", "topic": topic})
    users = {m["user_id"]: m for m in reply["members"]}
    assert set(users) == {w["planner"].pk, w["photographer"].pk}
    assert users[w["photographer"].pk]["supplier_id"] == w["photo_co"].pk


async def test_presence__forbidden_topic_reveals_nothing(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    reply = await conn.request({"type": "presence", "topic": w["b"].topic})
    assert reply["code"] == "forbidden" and "members" not in reply


async def test_ack__recorded_and_ack_updated_event_sent(opened):
    w = await world()
    topic = w["a"].topic
    planner, _, _ = await opened(user=w["planner"])
    await planner.request({"type": "subscribe", "topics": {topic: {}}})
    raised = await planner.request(
        {
            "type": "publish",
            "topic": topic,
            "event": "emergency.raised",
            "payload": {"kind": "weather", "text": "Storm: move inside"},
        }
    )
    event = await planner.recv_type("event")
    assert event["ack_required"] is True and event["priority"] == "critical"
    photographer, _, _ = await opened(user=w["photographer"])
    reply = await photographer.request({"type": "ack", "topic": topic, "seq": raised["seq"]})
    assert reply["status"] == "ok"
    update = await planner.recv_type("event")
    assert update["event"] == "ack.updated"
    assert w["photographer"].pk in update["payload"]["acked"]


async def test_unsubscribe__stops_delivery(opened):
    w = await world()
    topic = w["a"].topic
    reader, _, _ = await opened(user=w["photographer"])
    await reader.request({"type": "subscribe", "topics": {topic: {}}})
    await reader.recv_type("presence_diff")  # its own arrival
    await reader.request({"type": "unsubscribe", "topics": [topic]})
    writer, _, _ = await opened(user=w["planner"])
    await writer.request(
        {"type": "publish", "topic": topic, "event": "message.posted", "payload": {"text": "x"}}
    )
    assert await reader.nothing()


async def test_booking_deactivated__subscription_removed_and_publish_refused(opened):
    w = await world()
    topic = w["a"].topic
    conn, _, _ = await opened(user=w["photographer"])
    await conn.request({"type": "subscribe", "topics": {topic: {}}})

    @database_sync_to_async
    def unbook() -> None:
        from weddings.models import Booking

        # saved inactive, as the admin does
        booking = Booking.objects.get(supplier=w["photo_co"], wedding=w["a"])
        booking.active = False
        booking.save()

    await unbook()
    notice = await conn.recv_type("unsubscribed")
    assert notice["topic"] == topic and notice["code"] == "forbidden"
    reply = await conn.request(
        {"type": "publish", "topic": topic, "event": "message.posted", "payload": {"text": "x"}}
    )
    assert reply["code"] == "forbidden"


async def test_user_deactivated__live_connection_closes_4001(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    await conn.request({"type": "ping"})

    @database_sync_to_async
    def deactivate() -> None:
        user = w["photographer"]
        user.is_active = False
        user.save(update_fields=["is_active"])

    await deactivate()
    out = await conn.comm.receive_output(5)
    while out["type"] != "websocket.close":
        out = await conn.comm.receive_output(5)
    assert out["code"] == 4001


async def test_sweep__closes_silent_connections_and_fills_lost_events(opened, settings):
    # given a subscriber whose layer message is lost (stored directly, never broadcast)
    from realtime.delivery import topic_positions
    from realtime.node import get_node

    registry = get_node().consumers
    w = await world()
    topic = w["a"].topic
    conn, _, _ = await opened(user=w["photographer"])
    await conn.request({"type": "subscribe", "topics": {topic: {}}})
    await conn.recv_type("presence_diff")  # its own arrival

    @database_sync_to_async
    def store_silently() -> None:
        from realtime import services

        with_broadcast = services.broadcast_event
        services.broadcast_event = lambda event: None
        try:
            services.event_publish_system(topic, "message.posted", {"text": "lost"})
        finally:
            services.broadcast_event = with_broadcast

    await store_silently()
    # when the sweep runs twice (the first only marks how far behind it is)
    await registry.sweep(topic_positions)
    assert await conn.nothing()
    await registry.sweep(topic_positions)
    # then the event is delivered from the log
    assert (await conn.recv_type("event"))["payload"]["text"] == "lost"
    # and a connection silent past the idle timeout is closed with 4000
    settings.REALTIME_IDLE_TIMEOUT = -1
    await registry.sweep(topic_positions)
    out = await conn.comm.receive_output(5)
    assert out["type"] == "websocket.close" and out["code"] == 4000


def test_timestamps_are_utc_with_z():
    from realtime.protocol import utc_ms

    stamp = utc_ms(dt.datetime(2026, 6, 13, 15, 2, 11, 123000, tzinfo=dt.UTC))
    assert stamp == "2026-06-13T15:02:11.123Z"


async def test_outbox_full__slow_client_closed_1013_others_unaffected(
    opened, settings, monkeypatch
):
    # given a reader whose socket never drains (its writes hang) and a healthy reader
    from realtime.consumers import RealtimeConsumer

    settings.REALTIME_OUTBOX_SIZE = 3
    w = await world()
    topic = w["a"].topic
    real_send = RealtimeConsumer._send_text
    stalled = asyncio.Event()

    async def hang_when_stalled(self, text):
        if stalled.is_set() and self.user.pk == w["photographer"].pk:
            await asyncio.Event().wait()
        await real_send(self, text)

    monkeypatch.setattr(RealtimeConsumer, "_send_text", hang_when_stalled)
    healthy, _, _ = await opened(user=w["planner"])
    await healthy.request({"type": "subscribe", "topics": {topic: {}}})
    stuck, _, _ = await opened(user=w["photographer"])
    await stuck.request({"type": "subscribe", "topics": {topic: {}}})
    stalled.set()
    # when more events are published than its outbox holds
    for i in range(8):
        await healthy.request(
            {
                "type": "publish",
                "topic": topic,
                "event": "message.posted",
                "payload": {"text": str(i)},
            }
        )
    # then the stuck one is closed with 1013, and the healthy one got everything
    out = await stuck.comm.receive_output(5)
    while out["type"] != "websocket.close":
        out = await stuck.comm.receive_output(5)
    assert out["code"] == 1013
    assert [e["seq"] for e in await healthy.events(8)] == list(range(1, 9))


async def test_sweep__rejoins_presence_lost_by_the_store(opened):
    # given a subscriber whose presence entry vanished (expired during a stall, Redis lost it)
    from realtime.delivery import topic_positions
    from realtime.node import get_node

    registry = get_node().consumers
    w = await world()
    topic = w["a"].topic
    conn, _, _ = await opened(user=w["photographer"])
    await conn.request({"type": "subscribe", "topics": {topic: {}}})
    await conn.recv_type("presence_diff")
    (consumer,) = [c for c in registry.consumers() if c.user.pk == w["photographer"].pk]
    await consumer.presence.leave(topic, consumer.conn_id)
    assert (await conn.request({"type": "presence", "topic": topic}))["members"] == []
    # when the sweep runs
    await registry.sweep(topic_positions)
    # then it is present again, and the others were told
    diff = await conn.recv_type("presence_diff")
    assert [j["user_id"] for j in diff["joins"]] == [w["photographer"].pk]
    members = (await conn.request({"type": "presence", "topic": topic}))["members"]
    assert [m["user_id"] for m in members] == [w["photographer"].pk]


async def test_subscribe__beyond_the_per_connection_limit_is_limit_reached(opened, settings):
    settings.REALTIME_MAX_TOPICS_PER_CONNECTION = 1
    w = await world()
    conn, _, _ = await opened(user=w["staff"])
    reply = await conn.request(
        {"type": "subscribe", "topics": {w["a"].topic: {}, w["b"].topic: {}}}
    )
    assert reply["topics"][w["a"].topic]["status"] == "ok"
    assert reply["topics"][w["b"].topic]["code"] == "limit_reached"


async def test_rate_limit__repeated_abuse_closes_4008(opened, settings):
    settings.REALTIME_PUBLISH_RATE = 0.001
    settings.REALTIME_PUBLISH_BURST = 1
    settings.REALTIME_RATE_LIMIT_STRIKES = 3
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    frame = {
        "type": "publish",
        "topic": w["a"].topic,
        "event": "message.posted",
        "payload": {"text": "spam"},
    }
    for ref in range(6):
        await conn.send({**frame, "ref": str(ref)})
    out = await conn.comm.receive_output(5)
    while out["type"] != "websocket.close":
        out = await conn.comm.receive_output(5)
    assert out["code"] == 4008
