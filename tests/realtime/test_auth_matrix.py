"""Who may do what (PROTOCOL §2, §3, §5, §9): one table of operations × roles.

``MATRIX`` has a row per operation the code offers on a wedding: each client frame that
checks access to a topic, a publish of every event of the catalogue, and each route of
the wedding API. ``test_matrix__covers_every_role_and_operation`` holds the table to the
code, so an event, frame type, route or membership role added there without a row (or
column) here fails. Each row is run as its own test against the real ASGI application
(WebSocket) or Django's test client (HTTP): every role on a fresh world of its own. The
outcomes mean:

=========  ===========================================  ================================
outcome    WebSocket                                    HTTP (``Authorization: Bearer``)
=========  ===========================================  ================================
``OK``     reply ``status: ok``; a publish is stored    200 (GET) / 201 (POST, stored)
           and does what the event does to the rows
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

from realtime import protocol, tokens
from realtime import urls as realtime_urls
from realtime.catalogue import CATALOGUE
from realtime.models import Ack, Event
from realtime.services import event_publish, event_publish_system
from realtime.tokens import token_issue
from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from weddings.models import Supplier, SupplierMembership, TimelineItem, Wedding
from wedsync.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

OK, FORBIDDEN, UNAUTHENTICATED = "ok", "forbidden", "unauthenticated"
NO, AUTH = FORBIDDEN, UNAUTHENTICATED  # short names for the table

ROLES = (
    "photographer_a",  # a member of a photography company booked on A
    "owner_a",  # the owner of that company
    "coordinator_a",  # a coordinator of that company (coordinators edit the timeline)
    "planner_a",  # a member of a planning company booked on A
    "vendor_b",  # a florist booked on wedding B only
    "couple_a",  # one of A's couple
    "staff",
    "deactivated_a",  # a member of the photography company, deactivated after its token
    "expired_token",  # the photographer, with a token that ran out
    "anonymous",  # no credentials at all
)
# The membership role each supplier row holds on A (SupplierMembership.Role).
MEMBERSHIP = {
    "photographer_a": SupplierMembership.Role.MEMBER,
    "owner_a": SupplierMembership.Role.OWNER,
    "coordinator_a": SupplierMembership.Role.COORDINATOR,
    "planner_a": SupplierMembership.Role.MEMBER,
}


@dataclass(frozen=True)
class Operation:
    """What a row does: a WebSocket frame (or an HTTP route) and what it writes when OK."""

    frame: str | None = None  # the client frame type it sends
    event: str | None = None  # publish: the catalogue event
    route: str | None = None  # HTTP: the URL name
    method: str = "GET"
    stores_event: bool = False  # an OK stores one event on A
    changes_rows: bool = False  # an OK changes A's timeline or the wedding itself


# Events whose publishing changes the wedding's rows (the rest are only stored).
_CHANGES_ROWS = {
    "timeline.item.created", "timeline.item.updated", "timeline.item.deleted",
    "timeline.shifted", "wedding.updated",
}  # fmt: skip
# The events a row publishes: written out, so that one added to the catalogue fails the
# coverage test until it has a row.
_PUBLISHED = (
    "timeline.item.created", "timeline.item.updated", "timeline.item.deleted",
    "timeline.shifted", "vendor.status", "message.posted", "emergency.raised",
    "emergency.resolved", "wedding.updated",
)  # fmt: skip
OPERATIONS: dict[str, Operation] = {
    "ws_subscribe": Operation(frame="subscribe"),
    "ws_presence": Operation(frame="presence"),
    "ws_ack": Operation(frame="ack", stores_event=True),  # an ack_required ack: ack.updated
    **{
        f"ws_publish:{event}": Operation(
            frame="publish", event=event, stores_event=True, changes_rows=event in _CHANGES_ROWS
        )
        for event in _PUBLISHED
    },
    "http_snapshot": Operation(route="wedding-snapshot"),  # GET /api/weddings/<A>/
    "http_history": Operation(route="wedding-events"),  # GET /api/weddings/<A>/events
    "http_publish": Operation(  # POST /api/weddings/<A>/events (message.posted)
        route="wedding-events", method="POST", event="message.posted", stores_event=True
    ),
}
# Client frames that check no access to a topic, and why they have no row.
NO_ACCESS_CHECK = {
    "ping": "names no topic",
    "unsubscribe": "only leaves topics the connection already holds",
}

# Columns: ROLES in order (photographer, owner, coordinator, planner, vendor_b, couple,
# staff, deactivated, expired token, anonymous).
# fmt: off
MATRIX: dict[str, tuple[str, ...]] = {
    #                                   phot own  coor plan v_b  coup staf deact expir anon
    "ws_subscribe":                     (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "ws_presence":                      (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "ws_ack":                           (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:timeline.item.created": (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:timeline.item.updated": (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:timeline.item.deleted": (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:timeline.shifted":      (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:vendor.status":         (OK,  OK,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:message.posted":        (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:emergency.raised":      (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:emergency.resolved":    (OK,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:wedding.updated":       (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "http_snapshot":                    (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "http_history":                     (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "http_publish":                     (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
}
# fmt: on


@dataclass
class World:
    a: Wedding
    item: TimelineItem  # on A, version 1
    credential: str | None  # the role's token; None: no credentials at all
    supplier_id: int  # the role's own supplier on A (the photographers' for the others)


def _build_world(role: str, operation: str) -> World:
    """Weddings A and B, every role's user, and the credential of ``role``."""
    photographer, owner, coordinator, planner = (make_user() for _ in range(4))
    vendor_b, couple, deactivated = (make_user() for _ in range(3))
    staff = make_user(is_staff=True)
    a, b = make_wedding(couple=(couple,)), make_wedding(partner_one="Jo")
    planner_co = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    photo_co = make_supplier(users=(photographer, deactivated))
    SupplierMembership.objects.create(supplier=photo_co, user=owner, role="owner")
    SupplierMembership.objects.create(supplier=photo_co, user=coordinator, role="coordinator")
    florist_co = make_supplier(category=Supplier.Category.FLORIST, users=(vendor_b,))
    make_booking(supplier=planner_co, wedding=a)
    make_booking(supplier=photo_co, wedding=a)
    make_booking(supplier=florist_co, wedding=b)
    item = make_item(wedding=a, title="Ceremony", start=(14, 0))
    users = {
        "photographer_a": photographer,
        "owner_a": owner,
        "coordinator_a": coordinator,
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
    if operation == "ws_ack":
        # something to acknowledge: seq 1, an emergency everyone must acknowledge
        event_publish_system(
            a.topic, "emergency.raised", {"id": "e0", "kind": "fire", "text": "drill"},
            ack_required=True,
        )  # fmt: skip
    if operation == "ws_publish:emergency.resolved":
        # something to resolve: seq 1, emergency "e1" raised by the photographer (the
        # raiser, planners, coordinators and staff may resolve it)
        event_publish(
            topic=a.topic, event="emergency.raised", user=photographer,
            payload={"id": "e1", "kind": "fire", "text": "drill"},
        )  # fmt: skip
    supplier_id = planner_co.pk if role == "planner_a" else photo_co.pk
    return World(a=a, item=item, credential=credential, supplier_id=supplier_id)


def _payload(world: World, event: str) -> dict[str, Any]:
    """A valid payload of ``event`` on A: only access can make it fail."""
    item = world.item.pk
    return {
        "timeline.item.created": {"title": "Speeches", "starts_at": "2026-06-13T17:00:00Z"},
        "timeline.item.updated": {"id": item, "version": 1, "title": "Vows"},
        "timeline.item.deleted": {"id": item, "version": 1},
        "timeline.shifted": {"from_item_id": item, "minutes": 10},
        "vendor.status": {"supplier_id": world.supplier_id, "status": "arrived"},
        "message.posted": {"text": "hello"},
        "emergency.raised": {"kind": "medical", "text": "A guest fainted"},
        "emergency.resolved": {"id": "e1", "text": "All fine"},
        "wedding.updated": {"guest_count": 120},
    }[event]


def _state(world: World) -> tuple[int, int, Any]:
    """What a cell may change: A's events, the acks of them, A's timeline and itself."""
    events = Event.objects.filter(topic=world.a.topic)
    acks = Ack.objects.filter(event__topic=world.a.topic).count()
    timeline = tuple(
        TimelineItem.objects.filter(wedding=world.a)
        .order_by("pk")
        .values_list("pk", "title", "starts_at", "version")
    )
    wedding = Wedding.objects.values_list("guest_count", "venue_name", "notes").get(pk=world.a.pk)
    return events.count(), acks, (timeline, wedding)


# --- the operations ---------------------------------------------------------------------


async def _ws(world: World, operation: str) -> str:
    spec = OPERATIONS[operation]
    path = "/ws/realtime/"
    if world.credential is not None:
        path += f"?token={world.credential}"
    comm = WebsocketCommunicator(application, path)
    topic = world.a.topic
    try:
        connected, _ = await comm.connect(timeout=5)
        assert connected
        if spec.frame == "subscribe":
            frame = {"type": "subscribe", "topics": {topic: {}}}
        elif spec.frame == "presence":
            frame = {"type": "presence", "topic": topic}
        elif spec.frame == "ack":
            frame = {"type": "ack", "topic": topic, "seq": 1}
        else:
            frame = {"type": "publish", "topic": topic, "event": spec.event,
                     "payload": _payload(world, spec.event)}  # fmt: skip
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
    if spec.frame == "subscribe":
        assert reply["topics"] == {topic: {"status": "ok", "seq": 0}}, reply
    elif spec.frame == "presence":
        assert reply["topic"] == topic and isinstance(reply["members"], list), reply
    else:  # publish: the first event of A (after the emergency it resolves); ack: seq 1
        seq = 2 if spec.event == "emergency.resolved" else 1
        assert reply == {"type": "reply", "ref": "r1", "status": "ok", "topic": topic, "seq": seq}
    return OK


def _http(world: World, operation: str) -> str:
    spec = OPERATIONS[operation]
    client = Client(enforce_csrf_checks=True)
    headers = {}
    if world.credential is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {world.credential}"
    path = f"/api/weddings/{world.a.pk}/"
    if spec.route == "wedding-snapshot":
        response = client.get(path, **headers)
    elif spec.method == "GET":
        response = client.get(path + "events", **headers)
    else:
        body = orjson.dumps({"event": spec.event, "payload": _payload(world, spec.event)})
        response = client.post(path + "events", body, content_type="application/json", **headers)
    assert response["Content-Type"] == "application/json"
    body = orjson.loads(response.content)
    if response.status_code == 401:
        assert body["error"]["code"] == "unauthenticated", body
        return UNAUTHENTICATED
    if response.status_code == 404:
        assert body["error"]["code"] == "not_found", body
        return FORBIDDEN
    expected_status = 201 if spec.method == "POST" else 200
    assert response.status_code == expected_status, body
    if spec.route == "wedding-snapshot":
        assert body["wedding"]["id"] == world.a.pk
    elif spec.method == "GET":
        assert body["topic"] == world.a.topic and body["recovered"] is True
    else:
        assert body == {"status": "ok", "topic": world.a.topic, "seq": 1}
    return OK


def _expected_effects(operation: str, outcome: str) -> tuple[int, int, bool]:
    """(events stored, acks stored, rows changed) of a cell with that outcome."""
    spec, ok = OPERATIONS[operation], outcome == OK
    return (
        int(ok and spec.stores_event),
        int(ok and spec.frame == "ack"),
        ok and spec.changes_rows,
    )


# --- the matrix -------------------------------------------------------------------------


@pytest.mark.parametrize("operation", list(MATRIX))
async def test_auth_matrix(operation, monkeypatch):
    outcomes: dict[str, str] = {}
    effects: dict[str, tuple[int, int, bool]] = {}
    for role in ROLES:
        # given a fresh world of this role's own
        world = await database_sync_to_async(_build_world)(role, operation)
        events, acks, rows = await database_sync_to_async(_state)(world)
        # when
        with monkeypatch.context() as patch:
            if role == "expired_token":
                # the tokens' clock two hours on, past the default one-hour lifetime
                later = time.time() + 2 * 3600
                patch.setattr(tokens, "_now", lambda later=later: later)
            if OPERATIONS[operation].route is None:
                outcomes[role] = await _ws(world, operation)
            else:
                outcomes[role] = await database_sync_to_async(_http)(world, operation)
        events_after, acks_after, rows_after = await database_sync_to_async(_state)(world)
        effects[role] = (events_after - events, acks_after - acks, rows_after != rows)
    # then every role got its outcome, and did exactly what that outcome allows
    assert outcomes == dict(zip(ROLES, MATRIX[operation], strict=True))
    assert effects == {role: _expected_effects(operation, outcomes[role]) for role in ROLES}


def _wedding_routes() -> set[str]:
    """The names of the API's routes of one wedding (``<int:wedding_id>`` in the path)."""
    return {
        pattern.name
        for pattern in realtime_urls.urlpatterns
        if "wedding_id" in getattr(pattern.pattern, "converters", {})
    }


def test_matrix__covers_every_role_and_operation():
    # every row has an outcome for every role, and each outcome occurs
    assert set(MATRIX) == set(OPERATIONS)
    assert all(len(outcomes) == len(ROLES) for outcomes in MATRIX.values())
    assert {outcome for outcomes in MATRIX.values() for outcome in outcomes} == {
        OK,
        FORBIDDEN,
        UNAUTHENTICATED,
    }
    # every event of the catalogue is published by a row
    published = {op.event for op in OPERATIONS.values() if op.frame == "publish"}
    assert published == set(CATALOGUE)
    # every client frame type has a row, or is named as checking no access
    frames = {op.frame for op in OPERATIONS.values() if op.frame is not None}
    assert frames.isdisjoint(NO_ACCESS_CHECK)
    assert frames | set(NO_ACCESS_CHECK) == protocol.FRAME_TYPES
    # every route of the wedding API has a row
    assert {op.route for op in OPERATIONS.values() if op.route is not None} == _wedding_routes()
    # every membership role a vendor can hold has a column
    assert set(MEMBERSHIP.values()) == set(SupplierMembership.Role.values)
    assert set(MEMBERSHIP) <= set(ROLES)


# --- the handshake's Origin check ------------------------------------------------------


async def _handshake(origin: bytes) -> tuple[bool, Any]:
    """Connect with a valid token of the planner of A and the given Origin; ping."""
    world = await database_sync_to_async(_build_world)("planner_a", "ws_subscribe")
    comm = WebsocketCommunicator(
        application,
        f"/ws/realtime/?token={world.credential}",
        headers=[(b"origin", origin), (b"host", b"localhost")],
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
