"""Who may do what (docs/security.md, the role matrix): one test per cell.

``EXPECTED`` is the matrix written out by hand: a row per operation a user can attempt
(each client frame that checks access, a publish of every event of the catalogue, each
route of the wedding API, reading the vendors' coordination on every surface that shows
it, the other topics, tokens, the staff interfaces), a column per kind of user. Each cell
is its own test against the real ASGI application (WebSocket), Django's test client
(HTTP, the page's state, the admin), on a fresh world of its own, and checks both the
answer and what was stored. A cell whose interface reads the database from threads of
its own (the consumer, the snapshot's async view: ``core.db``) runs on a committed world
(``test_auth_matrix__committed``; the database is emptied after it as after a
transactional test, but with DELETE rather than Django's far slower flush); every other
cell is served on the test's own thread and connection, so its world stays in the test's
transaction, rolled back at the end (``test_auth_matrix__rolled_back``: it fails if
another thread reaches the database, and runs the on-commit callbacks as a commit would).
``test_expected__is_the_role_matrix`` holds the table to the server's one matrix
(``weddings.roles``) and ``test_docs__show_the_role_matrix`` the matrix to
docs/security.md, so none of the three can drift from the others;
``test_expected__covers_every_role_and_operation`` holds it to the code (an event,
frame type, route or membership role added without a row or column fails).

=========  ==========================================  =================================
outcome    WebSocket                                   HTTP
=========  ==========================================  =================================
``OK``     reply ``status: ok``; a publish is stored   200 / 201 (stored); reads show
           and does what it does; reads show every     every event and field
           event and field
``PLAN``   subscribed, but the coordination events     the same for the history, the
           arrive as ``hidden`` placeholders and a     snapshot's statuses and the
           status without its ``note`` (the couple)    page's state
``NO``     reply error ``forbidden``; nothing stored   404 ``not_found`` for a wedding
                                                       one may not see, 403 ``forbidden``
                                                       for an action one's role may not
                                                       do on one, the admin's login page
``AUTH``   handshake accepted, then close **4001**     401 ``unauthenticated``
=========  ==========================================  =================================

The contacts rows (``read.contacts``: the snapshot and the page's state) read the booked
suppliers' phone numbers: ``OK`` shows every one, ``PLAN`` none (the couple).
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.signals import post_migrate
from django.test import Client

from realtime import protocol, tokens
from realtime import urls as realtime_urls
from realtime.catalogue import CATALOGUE
from realtime.models import Ack, Event
from realtime.services import event_publish, event_publish_system
from realtime.tokens import token_issue
from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from weddings import roles
from weddings.models import Supplier, SupplierMembership, TimelineItem, Wedding
from wedsync.asgi import application

pytestmark = pytest.mark.timeout(60)

OK, PLAN, NO, AUTH = "ok", "plan", "forbidden", "unauthenticated"

ROLES = (
    "photographer_a",  # a member of a photography company booked on A
    "owner_a",  # the owner of that company
    "coordinator_a",  # a coordinator of that company (coordinators edit the timeline)
    "planner_a",  # a member of a planning company booked on A
    "vendor_b",  # a florist booked on wedding B only
    "couple_a",  # one of A's couple
    "staff",
    "deactivated_a",  # a member of the photography company, deactivated after its token
    "expired_token",  # the photographer, with a token that ran out (no session: anonymous)
    "anonymous",  # no credentials at all
)
# The membership role each supplier row holds on A (SupplierMembership.Role).
MEMBERSHIP = {
    "photographer_a": SupplierMembership.Role.MEMBER,
    "owner_a": SupplierMembership.Role.OWNER,
    "coordinator_a": SupplierMembership.Role.COORDINATOR,
    "planner_a": SupplierMembership.Role.MEMBER,
}
# What each column is on wedding A in the server's matrix (``weddings.roles``).
MATRIX_ROLE = {
    "photographer_a": roles.VENDOR,
    "owner_a": roles.VENDOR,
    "coordinator_a": roles.PLANNER,
    "planner_a": roles.PLANNER,
    "couple_a": roles.COUPLE,
    "staff": roles.STAFF,
}


@dataclass(frozen=True)
class Operation:
    """What a row does, and which action of the matrix it tries."""

    action: str  # the row of weddings.roles.MATRIX
    frame: str | None = None  # WebSocket: the client frame type it sends
    event: str | None = None  # publish: the catalogue event
    route: str | None = None  # HTTP: the URL name
    method: str = "GET"
    topic: str = "wedding"  # subscribe: wedding (A), supplier (the role's own), ops
    stores_event: bool = False  # an OK stores one event on A
    changes_rows: bool = False  # an OK changes A's timeline or the wedding itself
    reads: bool = False  # reads the coordination: OK shows it, PLAN hides it
    contacts: bool = False  # reads the phone numbers: OK shows them, PLAN hides them
    other: bool = False  # publish: the target is someone else's (supplier, emergency)


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
    "ws_subscribe": Operation("subscribe", frame="subscribe"),
    "ws_presence": Operation("presence", frame="presence"),
    "ws_ack": Operation("ack", frame="ack", stores_event=True),  # ack_required: ack.updated
    **{
        f"ws_publish:{event}": Operation(
            f"publish.{event}",
            frame="publish",
            event=event,
            stores_event=True,
            changes_rows=event in _CHANGES_ROWS,
        )
        for event in _PUBLISHED
    },
    "ws_publish:vendor.status:other": Operation(
        "status.any_supplier",
        frame="publish",
        event="vendor.status",
        stores_event=True,
        other=True,
    ),
    "ws_publish:emergency.resolved:other": Operation(
        "emergency.resolve_any",
        frame="publish",
        event="emergency.resolved",
        stores_event=True,
        other=True,
    ),
    "ws_read:coordination": Operation("read.coordination", frame="subscribe", reads=True),
    "ws_subscribe:supplier": Operation("supplier_topic", frame="subscribe", topic="supplier"),
    "ws_subscribe:ops": Operation("ops_topic", frame="subscribe", topic="ops"),
    "http_snapshot": Operation("subscribe", route="wedding-snapshot"),  # GET /api/weddings/<A>/
    "http_snapshot:coordination": Operation(
        "read.coordination", route="wedding-snapshot", reads=True
    ),
    "http_history": Operation("read.plan", route="wedding-events"),  # GET …/events
    "http_history:coordination": Operation("read.coordination", route="wedding-events", reads=True),
    "http_publish": Operation(  # POST /api/weddings/<A>/events (message.posted)
        "publish.message.posted",
        route="wedding-events",
        method="POST",
        event="message.posted",
        stores_event=True,
    ),
    "page:coordination": Operation("read.coordination", route="web:wedding-state", reads=True),
    "http_snapshot:contacts": Operation("read.contacts", route="wedding-snapshot", contacts=True),
    "page:contacts": Operation("read.contacts", route="web:wedding-state", contacts=True),
    "http_token": Operation("token.issue", route="realtime-token", method="POST"),
    "http_metrics": Operation("metrics.read", route="performance-metrics"),
    "http_operations": Operation("operations", route="performance-metrics", method="POST"),
    "admin": Operation("admin", route="admin:index"),
}
# Rows of the matrix whose cells are tried in another module, and why: the guest rows
# tell vendors apart by their supplier's category, so they need a caterer and a venue
# column this table does not have (every role of the matrix, each through the snapshot).
TRIED_ELSEWHERE = {
    action: "tests/realtime/test_guest_view.py (caterer and venue columns)"
    for action in ("guests.list", "guests.seating", "guests.catering")
}
# Client frames that check no access to a topic, and why they have no row.
NO_ACCESS_CHECK = {
    "ping": "names no topic",
    "unsubscribe": "only leaves topics the connection already holds",
}

# Columns: ROLES in order (photographer, owner, coordinator, planner, vendor_b, couple,
# staff, deactivated, expired token, anonymous).
# fmt: off
EXPECTED: dict[str, tuple[str, ...]] = {
    #                                      phot own  coor plan v_b  coup staf deact expir anon
    "ws_subscribe":                        (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "ws_presence":                         (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "ws_ack":                              (OK,  OK,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:timeline.item.created":    (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:timeline.item.updated":    (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:timeline.item.deleted":    (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:timeline.shifted":         (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:vendor.status":            (OK,  OK,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:vendor.status:other":      (NO,  NO,  NO,  NO,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:message.posted":           (OK,  OK,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:emergency.raised":         (OK,  OK,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:emergency.resolved":       (OK,  OK,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:emergency.resolved:other": (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_publish:wedding.updated":          (NO,  NO,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_read:coordination":                (OK,  OK,  OK,  OK,  NO,  PLAN, OK, AUTH, AUTH, AUTH),
    "ws_subscribe:supplier":               (OK,  OK,  OK,  OK,  OK,  NO,  OK,  AUTH, AUTH, AUTH),
    "ws_subscribe:ops":                    (NO,  NO,  NO,  NO,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "http_snapshot":                       (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "http_snapshot:coordination":          (OK,  OK,  OK,  OK,  NO,  PLAN, OK, AUTH, AUTH, AUTH),
    "http_history":                        (OK,  OK,  OK,  OK,  NO,  OK,  OK,  AUTH, AUTH, AUTH),
    "http_history:coordination":           (OK,  OK,  OK,  OK,  NO,  PLAN, OK, AUTH, AUTH, AUTH),
    "http_publish":                        (OK,  OK,  OK,  OK,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "page:coordination":                   (OK,  OK,  OK,  OK,  NO,  PLAN, OK, AUTH, AUTH, AUTH),
    "http_snapshot:contacts":              (OK,  OK,  OK,  OK,  NO,  PLAN, OK, AUTH, AUTH, AUTH),
    "page:contacts":                       (OK,  OK,  OK,  OK,  NO,  PLAN, OK, AUTH, AUTH, AUTH),
    "http_token":                          (OK,  OK,  OK,  OK,  OK,  OK,  OK,  AUTH, AUTH, AUTH),
    "http_metrics":                        (NO,  NO,  NO,  NO,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "http_operations":                     (NO,  NO,  NO,  NO,  NO,  NO,  OK,  AUTH, AUTH, AUTH),
    "admin":                               (NO,  NO,  NO,  NO,  NO,  NO,  OK,  NO,  NO,  NO),
}
# fmt: on
CELLS = [(operation, role) for operation in EXPECTED for role in ROLES]


def _from_other_threads(operation: str) -> bool:
    """Whether the row's interface reads the database from threads of its own, which see
    only a committed world: the consumer (WebSocket) and the snapshot's async view do, in
    the realtime database threads (``core.db``); the sync views and the admin serve the
    test client's request on the test's thread and connection."""
    spec = OPERATIONS[operation]
    return spec.frame is not None or spec.route == "wedding-snapshot"


COMMITTED_CELLS = [cell for cell in CELLS if _from_other_threads(cell[0])]
ROLLED_BACK_CELLS = [cell for cell in CELLS if not _from_other_threads(cell[0])]

# What the reading rows find stored on A before they read (seq 1-4), and the live event
# they receive after subscribing (seq 5): a status with a note, a message, an emergency,
# a change of the wedding, and one more message.
NOTE = "stuck behind a tractor"
# The phone numbers of A's booked suppliers, for the contacts rows.
PHONES = {
    Supplier.Category.PLANNER: "+44 20 7946 0001",
    Supplier.Category.PHOTOGRAPHER: "07700 900123",
}


@dataclass
class World:
    a: Wedding
    item: TimelineItem  # on A, version 1
    user: Any  # the role's user (None: anonymous)
    credential: str | None  # the role's token; None: no credentials at all
    supplier_id: int  # the role's own supplier (the photographers' for those with none)
    other_supplier_id: int  # a supplier booked on A that is not the role's own
    planner: Any
    session: bool = True  # signs in to the page and the admin (not an expired token)
    emergency: str = ""  # the id of the emergency a resolve row resolves


def _build_world(role: str, operation: str) -> World:
    """Weddings A and B, every role's user, and the credential of ``role``."""
    photographer, owner, coordinator, planner, colleague = (make_user() for _ in range(5))
    vendor_b, couple, deactivated = (make_user() for _ in range(3))
    staff = make_user(is_staff=True)
    a, b = make_wedding(couple=(couple,)), make_wedding(partner_one="Jo")
    planner_co = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    photo_co = make_supplier(users=(photographer, deactivated, colleague))
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
    user = users.get(role)
    credential = token_issue(user=user) if user is not None else None
    if role == "deactivated_a":
        # the token was issued while the user was active
        deactivated.is_active = False
        deactivated.save(update_fields=["is_active"])
    own = {"planner_a": planner_co.pk, "vendor_b": florist_co.pk}.get(role, photo_co.pk)
    world = World(
        a=a, item=item, user=user, credential=credential, supplier_id=own,
        other_supplier_id=photo_co.pk if own == planner_co.pk else planner_co.pk,
        planner=planner, session=role != "expired_token",
    )  # fmt: skip
    spec = OPERATIONS[operation]
    if spec.frame == "ack":
        # something to acknowledge: seq 1, an emergency everyone must acknowledge
        event_publish_system(
            a.topic, "emergency.raised", {"id": "e0", "kind": "fire", "text": "drill"},
            ack_required=True,
        )  # fmt: skip
    if spec.event == "emergency.resolved":
        # something to resolve: seq 1, an emergency raised by the role's own user, or by
        # a colleague of the photographer's company (the raiser, planners, coordinators
        # and staff may resolve it)
        raiser = colleague if spec.other or user is None or not user.is_active else user
        world.emergency = _raise(a, raiser)
    if spec.reads:
        _store_reading(world, photographer, photo_co.pk)
    if spec.contacts:
        for supplier in (planner_co, photo_co):
            supplier.phone = PHONES[supplier.category]
            supplier.save(update_fields=["phone"])
    return world


def _raise(wedding: Wedding, raiser: Any) -> str:
    """An emergency on ``wedding`` whose raiser is ``raiser``, whatever their role."""
    raised = event_publish_system(
        wedding.topic, "emergency.raised", {"id": "e1", "kind": "fire", "text": "drill"},
        ack_required=True,
    )  # fmt: skip
    Event.objects.filter(pk=raised.pk).update(actor_user_id=raiser.pk)
    return "e1"


def _store_reading(world: World, photographer: Any, photo_co: int) -> None:
    """Seq 1-4 of A: a status with a note, a message, an emergency, a wedding change."""
    a = world.a.topic
    status = {"supplier_id": photo_co, "status": "running_late", "minutes_late": 10, "note": NOTE}
    event_publish(topic=a, event="vendor.status", payload=status, user=photographer)
    event_publish(topic=a, event="message.posted", payload={"text": "the DJ"}, user=world.planner)
    event_publish(
        topic=a, event="emergency.raised", payload={"kind": "medical", "text": "fainted"},
        user=photographer,
    )  # fmt: skip
    event_publish(topic=a, event="wedding.updated", payload={"guest_count": 99}, user=world.planner)


def _publish_live(world: World) -> None:
    """Seq 5 of A: one more message, while the role's connection is subscribed."""
    event_publish(
        topic=world.a.topic, event="message.posted", payload={"text": "cake"}, user=world.planner
    )


def _payload(world: World, event: str, other: bool = False) -> dict[str, Any]:
    """A valid payload of ``event`` on A: only access can make it fail."""
    item = world.item.pk
    supplier = world.other_supplier_id if other else world.supplier_id
    return {
        "timeline.item.created": {"title": "Speeches", "starts_at": "2026-06-13T17:00:00Z"},
        "timeline.item.updated": {"id": item, "version": 1, "title": "Vows"},
        "timeline.item.deleted": {"id": item, "version": 1},
        "timeline.shifted": {"from_item_id": item, "minutes": 10},
        "vendor.status": {"supplier_id": supplier, "status": "arrived"},
        "message.posted": {"text": "hello"},
        "emergency.raised": {"kind": "medical", "text": "A guest fainted"},
        "emergency.resolved": {"id": world.emergency or "e1", "text": "All fine"},
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


# --- what a reader was shown ------------------------------------------------------------


def _frames_outcome(frames: list[dict[str, Any]]) -> str:
    """OK when the frames (seq 1 on, in order) show everything; PLAN when exactly the
    coordination is hidden; anything else fails the test."""
    assert [frame["seq"] for frame in frames] == list(range(1, len(frames) + 1)), frames
    names = [frame["event"] for frame in frames]
    status = next(frame for frame in frames if frame["event"] == "vendor.status")
    if protocol.HIDDEN_EVENT not in names:
        assert {"message.posted", "emergency.raised"} <= set(names), names
        assert status["payload"]["note"] == NOTE, status
        return OK
    for frame in frames:
        if frame["event"] == protocol.HIDDEN_EVENT:
            assert frame["payload"] == {}, frame
            assert frame["actor"] == {"user_id": None, "supplier_id": None}, frame
    assert (
        names == ["vendor.status", "hidden", "hidden", "wedding.updated", "hidden"][: len(names)]
    ), names
    assert "note" not in status["payload"] and status["payload"]["minutes_late"] == 10, status
    return PLAN


def _statuses_outcome(statuses: list[dict[str, Any]], feed: list[dict[str, Any]] | None) -> str:
    """The snapshot's statuses (and the page's feed): OK with the note (and the feed),
    PLAN without either."""
    (status,) = statuses
    if "note" in status:
        assert status["note"] == NOTE and (feed is None or len(feed) == 2), (status, feed)
        return OK
    assert status["minutes_late"] == 10 and not feed, (status, feed)
    return PLAN


# --- the operations ---------------------------------------------------------------------


def _ws_frame(world: World, spec: Operation) -> dict[str, Any]:
    topic = world.a.topic
    if spec.frame == "subscribe":
        if spec.topic == "supplier":
            topic = f"supplier:{world.supplier_id}"
        elif spec.topic == "ops":
            topic = "ops"
        return {"type": "subscribe", "topics": {topic: {"since": 0} if spec.reads else {}}}
    if spec.frame == "presence":
        return {"type": "presence", "topic": topic}
    if spec.frame == "ack":
        return {"type": "ack", "topic": topic, "seq": 1}
    return {
        "type": "publish", "topic": topic, "event": spec.event,
        "payload": _payload(world, spec.event, spec.other),
    }  # fmt: skip


async def _ws(world: World, operation: str) -> str:
    spec = OPERATIONS[operation]
    path = "/ws/realtime/"
    if world.credential is not None:
        path += f"?token={world.credential}"
    comm = WebsocketCommunicator(application, path)
    frame = _ws_frame(world, spec)
    try:
        connected, _ = await comm.connect(timeout=5)
        assert connected
        await comm.send_to(text_data=orjson.dumps({**frame, "ref": "r1"}).decode())
        reply = await _reply_to(comm, "r1")
        if reply is None:
            return AUTH
        events = []
        if spec.reads and reply["status"] == "ok":
            # the missed events came after the reply; one more comes live
            await database_sync_to_async(_publish_live)(world)
            while len(events) < 5:
                received = orjson.loads(await comm.receive_from(5))
                if received["type"] == "event":
                    events.append(received)
    finally:
        await comm.disconnect()
    return _ws_outcome(world, spec, frame, reply, events)


async def _reply_to(comm: WebsocketCommunicator, ref: str) -> dict[str, Any] | None:
    """The reply to the frame ``ref``; None when the server closed with 4001 instead."""
    while True:
        output = await comm.receive_output(5)
        if output["type"] == "websocket.close":
            assert output["code"] == 4001, output
            return None
        reply = orjson.loads(output["text"])
        if reply.get("ref") == ref:
            return reply


def _ws_outcome(world: World, spec: Operation, frame: dict, reply: dict, events: list[dict]) -> str:
    if spec.frame == "subscribe":
        (topic,) = frame["topics"]
        # a frame of one topic refused is refused as a whole, a frame of several per topic
        status = reply["topics"][topic] if reply["status"] == "ok" else reply
        if status["status"] == "error":
            assert status["code"] == "forbidden", reply
            return NO
        if spec.reads:
            return _frames_outcome(events)
        assert status == {"status": "ok", "seq": 0, "epoch": ANY}, reply
        return OK
    if reply["status"] == "error":
        assert reply["code"] == "forbidden", reply
        return NO
    if spec.frame == "presence":
        assert reply["topic"] == world.a.topic and isinstance(reply["members"], list), reply
        return OK
    # publish: the first event of A (after the emergency it resolves); ack: seq 1
    seq = 2 if spec.event == "emergency.resolved" else 1
    assert reply == {"type": "reply", "ref": "r1", "status": "ok", "topic": world.a.topic,
                     "seq": seq}  # fmt: skip
    return OK


def _client(world: World, spec: Operation) -> tuple[Client, dict[str, str]]:
    """A client with the role's credential: its token, or a session for the page and the
    admin (the photographer's expired token is no session: anonymous there)."""
    client = Client(enforce_csrf_checks=spec.route != "admin:index")
    if spec.route in {"web:wedding-state", "admin:index"}:
        if world.session and world.user is not None:
            client.force_login(world.user)
        return client, {}
    headers = {}
    if world.credential is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {world.credential}"
    return client, headers


def _http_response(world: World, spec: Operation) -> Any:
    client, headers = _client(world, spec)
    path = f"/api/weddings/{world.a.pk}/"
    if spec.route == "wedding-snapshot":
        return client.get(path, **headers)
    if spec.route == "wedding-events" and spec.method == "GET":
        return client.get(path + "events", **headers)
    if spec.route == "wedding-events":
        body = orjson.dumps({"event": spec.event, "payload": _payload(world, spec.event)})
        return client.post(path + "events", body, content_type="application/json", **headers)
    if spec.route == "web:wedding-state":
        return client.get(f"/weddings/{world.a.pk}/state")
    if spec.route == "realtime-token":
        return client.post("/api/realtime/token", b"{}", "application/json", **headers)
    if spec.route == "performance-metrics" and spec.method == "GET":
        return client.get("/api/performance/realtime/metrics", **headers)
    if spec.route == "performance-metrics":
        body = orjson.dumps({"action": "wedding_day_mode", "enabled": False, "reason": "matrix"})
        return client.post("/api/performance/realtime/metrics", body, "application/json", **headers)
    return client.get("/admin/")  # the admin's index


def _http(world: World, operation: str) -> str:
    spec = OPERATIONS[operation]
    response = _http_response(world, spec)
    if spec.route == "admin:index":
        if response.status_code == 302:
            assert response["Location"].startswith("/admin/login/"), response
            return NO
        assert response.status_code == 200
        return OK
    assert response["Content-Type"] == "application/json"
    body = orjson.loads(response.content)
    if response.status_code == 401:
        assert body["error"]["code"] == "unauthenticated", body
        return AUTH
    if response.status_code in (403, 404):
        code = {403: "forbidden", 404: "not_found"}[response.status_code]
        assert body["error"]["code"] == code, body
        return NO
    expected_status = 201 if spec.route == "wedding-events" and spec.method == "POST" else 200
    assert response.status_code == expected_status, body
    return _http_outcome(world, spec, body)


def _contacts_outcome(suppliers: list[dict[str, Any]]) -> str:
    """The booked suppliers: OK with every phone number, PLAN with none."""
    phones = sorted(supplier.get("phone", "") for supplier in suppliers)
    if all(phones):
        assert phones == sorted(PHONES.values()), suppliers
        return OK
    assert not any(phones) and len(phones) == len(PHONES), suppliers
    return PLAN


def _http_outcome(world: World, spec: Operation, body: dict[str, Any]) -> str:
    if spec.contacts and spec.route == "wedding-snapshot":
        return _contacts_outcome(body["suppliers"])
    if spec.contacts:  # the page's state, which tells the page whether it shows contacts
        outcome = _contacts_outcome(body["suppliers"])
        assert body["viewer"]["contacts"] is (outcome == OK), body["viewer"]
        return outcome
    if spec.reads and spec.route == "wedding-events":
        return _frames_outcome(body["events"])
    if spec.reads and spec.route == "wedding-snapshot":
        return _statuses_outcome(body["statuses"], None)
    if spec.reads:  # the page's state: the feed of messages and emergencies, the statuses
        outcome = _statuses_outcome(body["statuses"], body["feed"])
        assert body["viewer"]["read_only"] is (outcome == PLAN), body["viewer"]
        return outcome
    if spec.route == "wedding-snapshot":
        assert body["wedding"]["id"] == world.a.pk
    elif spec.route == "wedding-events" and spec.method == "GET":
        assert body["topic"] == world.a.topic and body["recovered"] is True
    elif spec.route == "wedding-events":
        assert body == {"status": "ok", "topic": world.a.topic, "seq": 1}
    elif spec.route == "realtime-token":
        assert body["token"] and body["expires_at"], body
    elif spec.method == "POST":
        assert body["status"] == "ok" and body["wedding_day_mode"]["enabled"] is False, body
    return OK


def _expected_effects(operation: str, outcome: str) -> tuple[int, int, bool]:
    """(events stored, acks stored, rows changed) of a cell with that outcome."""
    spec, ok = OPERATIONS[operation], outcome == OK
    # a WebSocket reading row stores the live event it then receives
    live = spec.reads and spec.frame is not None and outcome in (OK, PLAN)
    return (
        int(ok and spec.stores_event) + int(live),
        int(ok and spec.frame == "ack"),
        ok and spec.changes_rows,
    )


# --- the matrix -------------------------------------------------------------------------


def _expire_tokens(role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if role == "expired_token":
        # the tokens' clock two hours on, past the default one-hour lifetime
        later = time.time() + 2 * 3600
        monkeypatch.setattr(tokens, "_now", lambda: later)


def _check(operation: str, role: str, outcome: str, before: tuple, after: tuple) -> None:
    """The role got its outcome, and did exactly what that outcome allows."""
    (events, acks, rows), (events_after, acks_after, rows_after) = before, after
    assert outcome == EXPECTED[operation][ROLES.index(role)]
    effects = (events_after - events, acks_after - acks, rows_after != rows)
    assert effects == _expected_effects(operation, outcome)


@pytest.fixture
def transactional_db(django_db_setup: None, django_db_blocker: Any) -> Any:
    """pytest-django's ``transactional_db`` (``django_db(transaction=True)``), emptied
    faster: no test transaction, so that what the test writes is committed and other
    threads see it; afterwards the database is left as Django's flush leaves it, at a
    tenth of the cost (~25 ms, not ~250): DELETE from every table (TRUNCATE recreates
    every table's files), but for the content types and permissions that the flush would
    create again at once (``post_migrate``). Overriding the fixture by its name keeps
    pytest-django setting up the test database and ordering these tests as transactional.
    """
    with django_db_blocker.unblock():
        yield
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            for table in _emptied_tables():
                cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")  # noqa: S608
        connection.close()  # as after a transactional test: a fresh connection next


@functools.cache
def _emptied_tables() -> tuple[str, ...]:
    """The tables Django's flush empties, but for those its ``post_migrate`` fills again.
    Only Django's own receivers may fill any: one of another app's would fail here, as
    what it makes after a flush would have to be kept too."""
    receivers = {receiver.__module__ for receiver in _post_migrate_receivers()}
    assert receivers == {"django.contrib.auth.management", "django.contrib.contenttypes.management"}
    kept = {ContentType._meta.db_table, Permission._meta.db_table}
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    return tuple(sorted(set(tables) - kept))


def _post_migrate_receivers() -> list[Any]:
    refs = [entry[1] for entry in post_migrate.receivers]  # (key, receiver, is_async)
    return [ref() if isinstance(ref, weakref.ref) else ref for ref in refs]


@pytest.mark.parametrize(("operation", "role"), COMMITTED_CELLS)
@pytest.mark.usefixtures("transactional_db")
async def test_auth_matrix__committed(operation, role, monkeypatch):
    # given a fresh world of this role's own, committed: the interface reads it from its
    # own database threads
    world = await database_sync_to_async(_build_world)(role, operation)
    before = await database_sync_to_async(_state)(world)
    _expire_tokens(role, monkeypatch)

    # when
    if OPERATIONS[operation].frame is not None:
        outcome = await _ws(world, operation)
    else:
        outcome = await database_sync_to_async(_http)(world, operation)

    # then
    _check(operation, role, outcome, before, await database_sync_to_async(_state)(world))


@pytest.mark.django_db
@pytest.mark.parametrize(("operation", "role"), ROLLED_BACK_CELLS)
def test_auth_matrix__rolled_back(operation, role, monkeypatch, django_capture_on_commit_callbacks):
    # given a fresh world of this role's own in the test's transaction, rolled back at
    # the end: the test client serves the request on this thread, on its connection
    others = _other_threads_reaching_the_database(monkeypatch)
    with django_capture_on_commit_callbacks(execute=True):
        world = _build_world(role, operation)
    before = _state(world)
    _expire_tokens(role, monkeypatch)

    # when (what runs once committed, the broadcast of a publish, runs as it would)
    with django_capture_on_commit_callbacks(execute=True):
        outcome = _http(world, operation)

    # then
    _check(operation, role, outcome, before, _state(world))
    assert others == set(), "another thread would not have seen the uncommitted world"


def _other_threads_reaching_the_database(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The threads other than this one that reach the database from now on (each has a
    connection of its own, which does not see this test's transaction)."""
    this, others = threading.get_ident(), set()
    ensure_connection = BaseDatabaseWrapper.ensure_connection

    def ensure_connection_here(self: BaseDatabaseWrapper) -> None:
        if threading.get_ident() != this:
            others.add(threading.get_ident())
        ensure_connection(self)

    monkeypatch.setattr(BaseDatabaseWrapper, "ensure_connection", ensure_connection_here)
    return others


def test_expected__is_the_role_matrix():
    # every member of A gets what the server's matrix gives their role, and the reading
    # rows hide the coordination exactly from those the matrix refuses it
    for operation, spec in OPERATIONS.items():
        for role, matrix_role in MATRIX_ROLE.items():
            allowed = roles.allows(spec.action, matrix_role)
            if spec.reads or spec.contacts:
                wanted = OK if allowed else PLAN
            else:
                wanted = OK if allowed else NO
            assert EXPECTED[operation][ROLES.index(role)] == wanted, (operation, role)
    # and every action of the matrix is tried by a row
    assert {spec.action for spec in OPERATIONS.values()} | set(TRIED_ELSEWHERE) == set(roles.MATRIX)


def test_docs__show_the_role_matrix():
    docs = (Path(settings.BASE_DIR) / "docs" / "security.md").read_text()

    assert roles.matrix_markdown() in docs


def _wedding_routes() -> set[str]:
    """The names of the API's routes of one wedding (``<int:wedding_id>`` in the path)."""
    return {
        pattern.name
        for pattern in realtime_urls.urlpatterns
        if "wedding_id" in getattr(pattern.pattern, "converters", {})
    }


def test_expected__covers_every_role_and_operation():
    # every row has an outcome for every role, and each outcome occurs
    assert set(EXPECTED) == set(OPERATIONS)
    assert all(len(outcomes) == len(ROLES) for outcomes in EXPECTED.values())
    assert {outcome for outcomes in EXPECTED.values() for outcome in outcomes} == {
        OK, PLAN, NO, AUTH,
    }  # fmt: skip
    # every event of the catalogue is published by a row
    published = {op.event for op in OPERATIONS.values() if op.frame == "publish"}
    assert published == set(CATALOGUE)
    # every client frame type has a row, or is named as checking no access
    frames = {op.frame for op in OPERATIONS.values() if op.frame is not None}
    assert frames.isdisjoint(NO_ACCESS_CHECK)
    assert frames | set(NO_ACCESS_CHECK) == protocol.FRAME_TYPES
    # every route of the wedding API has a row
    routes = {op.route for op in OPERATIONS.values() if op.route is not None}
    assert _wedding_routes() <= routes
    # every membership role a vendor can hold has a column, every matrix role a column
    assert set(MEMBERSHIP.values()) == set(SupplierMembership.Role.values)
    assert set(MEMBERSHIP) <= set(ROLES)
    assert set(MATRIX_ROLE.values()) == set(roles.Role)


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


@pytest.mark.usefixtures("transactional_db")
async def test_handshake__foreign_origin_is_refused_even_with_a_valid_token():
    connected, _ = await _handshake(b"https://evil.example")

    assert connected is False


@pytest.mark.usefixtures("transactional_db")
async def test_handshake__allowed_origin_with_a_valid_token_is_accepted():
    connected, pong = await _handshake(b"http://localhost")

    assert connected is True
    assert pong == {"type": "pong", "ref": "p"}
