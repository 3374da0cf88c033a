"""Who may do what (PROTOCOL §2, §3, §5, §9): one table of roles × operations.

Each cell of ``MATRIX`` is run as its own test against the real ASGI application
(WebSocket) or Django's test client (HTTP), on a fresh world. The outcomes mean:

=========  ===========================================  ================================
outcome    WebSocket                                    HTTP (``Authorization: Bearer``)
=========  ===========================================  ================================
``OK``     reply ``status: ok``; a publish is stored    200 (GET) / 201 (POST, stored)
           (a timeline update changes the item)
``NO``     reply error ``forbidden``; nothing stored    404 ``not_found``, as for a
           or changed                                   missing wedding; nothing stored
``AUTH``   handshake accepted, then close **4001**      401 ``unauthenticated``
=========  ===========================================  ================================
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from realtime import tokens
from realtime.models import Event
from realtime.tokens import token_issue
from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from weddings.models import Supplier, TimelineItem, Wedding
from wedsync.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

OK, FORBIDDEN, UNAUTHENTICATED = "ok", "forbidden", "unauthenticated"
NO, AUTH = FORBIDDEN, UNAUTHENTICATED  # short names for the table

OPERATIONS = (
    "ws_subscribe",  # connect with ?token=, subscribe wedding:<A>
    "ws_message",  # connect, publish message.posted on wedding:<A>
    "ws_timeline",  # connect, publish timeline.item.updated on wedding:<A>
    "http_snapshot",  # GET /api/weddings/<A>/
    "http_history",  # GET /api/weddings/<A>/events
    "http_publish",  # POST /api/weddings/<A>/events (message.posted)
)

# fmt: off
MATRIX: dict[str, tuple[str, ...]] = {
    #                  ws_subscribe ws_message ws_timeline http_snapshot http_history http_publish
    "photographer_a": (OK,          OK,        NO,         OK,           OK,          OK),
    "planner_a":      (OK,          OK,        OK,         OK,           OK,          OK),
    "vendor_b":       (NO,          NO,        NO,         NO,           NO,          NO),
    "couple_a":       (OK,          OK,        NO,         OK,           OK,          OK),
    "staff":          (OK,          OK,        OK,         OK,           OK,          OK),
    "deactivated_a":  (AUTH,        AUTH,      AUTH,       AUTH,         AUTH,        AUTH),
    "expired_token":  (AUTH,        AUTH,      AUTH,       AUTH,         AUTH,        AUTH),
    "anonymous":      (AUTH,        AUTH,      AUTH,       AUTH,         AUTH,        AUTH),
}
# fmt: on

CELLS = [
    pytest.param(role, operation, outcome, id=f"{role}-{operation}-{outcome}")
    for role, outcomes in MATRIX.items()
    for operation, outcome in zip(OPERATIONS, outcomes, strict=True)
]


@dataclass
class World:
    a: Wedding
    item: TimelineItem  # on A, version 1
    credential: str | None  # the role's token; None: no credentials at all


def _build_world(role: str) -> World:
    """Weddings A and B, every role's user, and the credential of ``role``."""
    photographer, planner, vendor_b = make_user(), make_user(), make_user()
    couple, staff, deactivated = make_user(), make_user(is_staff=True), make_user()
    a, b = make_wedding(couple=(couple,)), make_wedding(partner_one="Jo")
    planner_co = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    photo_co = make_supplier(users=(photographer, deactivated))
    florist_co = make_supplier(category=Supplier.Category.FLORIST, users=(vendor_b,))
    make_booking(supplier=planner_co, wedding=a)
    make_booking(supplier=photo_co, wedding=a)
    make_booking(supplier=florist_co, wedding=b)
    item = make_item(wedding=a, title="Ceremony", start=(14, 0))
    users = {
        "photographer_a": photographer,
        "planner_a": planner,
        "vendor_b": vendor_b,
        "couple_a": couple,
        "staff": staff,
        "deactivated_a": deactivated,
        "expired_token": photographer,  # would be allowed, but the token ran out
    }
    credential = token_issue(user=users[role]) if role in users else None
    if role == "deactivated_a":
        # the token was issued while the user was active
        deactivated.is_active = False
        deactivated.save(update_fields=["is_active"])
    return World(a=a, item=item, credential=credential)


@pytest.fixture
def expire_tokens(monkeypatch):
    """Move the tokens' clock two hours on (past the default one-hour lifetime)."""

    def expire() -> None:
        later = time.time() + 2 * 3600
        monkeypatch.setattr(tokens, "_now", lambda: later)

    return expire


# --- the operations ---------------------------------------------------------------------


async def _ws(world: World, operation: str) -> str:
    path = "/ws/realtime/"
    if world.credential is not None:
        path += f"?token={world.credential}"
    comm = WebsocketCommunicator(application, path)
    try:
        connected, _ = await comm.connect(timeout=5)
        assert connected
        topic = world.a.topic
        if operation == "ws_subscribe":
            frame = {"type": "subscribe", "topics": {topic: {}}}
        elif operation == "ws_message":
            frame = {"type": "publish", "topic": topic, "event": "message.posted",
                     "payload": {"text": "hello"}}  # fmt: skip
        else:
            frame = {"type": "publish", "topic": topic, "event": "timeline.item.updated",
                     "payload": {"id": world.item.pk, "version": 1, "title": "Vows"}}  # fmt: skip
        await comm.send_to(text_data=orjson.dumps({**frame, "ref": "r1"}).decode())
        while True:
            output = await comm.receive_output(5)
            if output["type"] == "websocket.close":
                assert output["code"] == 4001, output
                return UNAUTHENTICATED
            reply = orjson.loads(output["text"])
            if reply.get("ref") == "r1":
                break
    finally:
        await comm.disconnect()
    if reply["status"] == "error":
        assert reply["code"] == "forbidden", reply
        return FORBIDDEN
    if operation == "ws_subscribe":
        assert reply["topics"] == {topic: {"status": "ok", "seq": 0}}, reply
    else:
        assert reply == {"type": "reply", "ref": "r1", "status": "ok", "topic": topic, "seq": 1}
    return OK


def _http(world: World, operation: str) -> str:
    client = Client(enforce_csrf_checks=True)
    headers = {}
    if world.credential is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {world.credential}"
    path = f"/api/weddings/{world.a.pk}/"
    if operation == "http_snapshot":
        response = client.get(path, **headers)
    elif operation == "http_history":
        response = client.get(path + "events", **headers)
    else:
        body = orjson.dumps({"event": "message.posted", "payload": {"text": "hello"}})
        response = client.post(path + "events", body, content_type="application/json", **headers)
    assert response["Content-Type"] == "application/json"
    body = orjson.loads(response.content)
    if response.status_code == 401:
        assert body["error"]["code"] == "unauthenticated", body
        return UNAUTHENTICATED
    if response.status_code == 404:
        assert body["error"]["code"] == "not_found", body
        return FORBIDDEN
    expected_status = 201 if operation == "http_publish" else 200
    assert response.status_code == expected_status, body
    if operation == "http_snapshot":
        assert body["wedding"]["id"] == world.a.pk
    elif operation == "http_history":
        assert body["topic"] == world.a.topic and body["recovered"] is True
    else:
        assert body == {"status": "ok", "topic": world.a.topic, "seq": 1}
    return OK


def _effects(world: World) -> tuple[int, int]:
    """What the cell left behind: the events stored on A, the item's version."""
    return (
        Event.objects.filter(topic=world.a.topic).count(),
        TimelineItem.objects.get(pk=world.item.pk).version,
    )


# --- the matrix -------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "operation", "expected"), CELLS)
async def test_auth_matrix(role, operation, expected, expire_tokens):
    # given
    world = await database_sync_to_async(_build_world)(role)
    if role == "expired_token":
        expire_tokens()
    # when
    if operation.startswith("ws_"):
        outcome = await _ws(world, operation)
    else:
        outcome = await database_sync_to_async(_http)(world, operation)
    # then
    assert outcome == expected
    events, version = await database_sync_to_async(_effects)(world)
    writes = {"ws_message", "ws_timeline", "http_publish"}
    assert events == (1 if outcome == OK and operation in writes else 0)
    assert version == (2 if outcome == OK and operation == "ws_timeline" else 1)


def test_matrix__covers_every_role_and_operation():
    assert len(MATRIX) == 8
    assert all(len(outcomes) == len(OPERATIONS) for outcomes in MATRIX.values())
    assert {outcome for outcomes in MATRIX.values() for outcome in outcomes} == {
        OK,
        FORBIDDEN,
        UNAUTHENTICATED,
    }


# --- the handshake's Origin check ------------------------------------------------------


async def _handshake(origin: bytes) -> tuple[bool, Any]:
    """Connect with a valid token of the planner of A and the given Origin; ping."""
    world = await database_sync_to_async(_build_world)("planner_a")
    comm = WebsocketCommunicator(
        application, f"/ws/realtime/?token={world.credential}", headers=[(b"origin", origin)]
    )
    try:
        connected, _ = await comm.connect(timeout=5)
        if not connected:
            return False, None
        await comm.send_to(text_data='{"type":"ping","ref":"p"}')
        return True, orjson.loads(await comm.receive_from(5))
    finally:
        await comm.disconnect()


async def test_handshake__foreign_origin_is_refused_even_with_a_valid_token():
    connected, _ = await _handshake(b"https://evil.example")

    assert connected is False


async def test_handshake__allowed_origin_with_a_valid_token_is_accepted():
    connected, pong = await _handshake(b"http://localhost")

    assert connected is True
    assert pong == {"type": "pong", "ref": "p"}
