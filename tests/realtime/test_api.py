"""The HTTP API of PROTOCOL §9, through Django's test ``Client`` and the real database.

Tests of the snapshot endpoint run with ``transaction=True`` (``SNAPSHOT_DB``): the
snapshot opens its own REPEATABLE READ transaction on PostgreSQL, which must be the first
statement of a real transaction, and the endpoint reads what is not cached (the token's
user, the access, the snapshot) in the realtime database threads, whose connections see
committed rows only. The others use the faster per-test transaction.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any
from unittest.mock import ANY

import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator
from django.conf import settings
from django.db.backends.utils import CursorWrapper
from django.test import Client
from django.utils.crypto import get_random_string

from core import db as realtime_db
from realtime import selectors
from realtime.models import Event, TopicCursor
from realtime.services import event_publish
from realtime.tokens import token_authenticate, token_expires_at, token_issue
from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from weddings.models import Supplier, TimelineItem, Wedding
from wedsync.asgi import application

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(30)]
SNAPSHOT_DB = pytest.mark.django_db(transaction=True)

JSON = "application/json"
MISSING_ID = 987_654_321  # a wedding id that does not exist


@dataclass
class World:
    """Wedding A (planner and photographer booked, a lapsed booking), B (a florist), C."""

    a: Wedding
    b: Wedding
    c: Wedding
    planner: Any
    photographer: Any
    florist: Any  # vendor of B only
    couple: Any  # couple of A
    staff: Any
    lapsed: Any  # vendor whose booking on A is inactive
    planner_co: Supplier
    photo_co: Supplier
    ceremony: TimelineItem
    photos: TimelineItem
    dinner: TimelineItem  # pinned
    speeches: TimelineItem

    def path(self, wedding: Wedding | int, suffix: str = "") -> str:
        wedding_id = wedding if isinstance(wedding, int) else wedding.pk
        return f"/api/weddings/{wedding_id}/{suffix}"


@pytest.fixture
def w() -> World:
    planner, photographer, florist = make_user(), make_user(), make_user()
    couple, staff, lapsed = make_user(), make_user(is_staff=True), make_user()
    a = make_wedding(couple=(couple,), venue_name="Old Barn", guest_count=80)
    b = make_wedding(partner_one="Jo", partner_two="Kim", date=dt.date(2026, 7, 1))
    c = make_wedding(partner_one="Lee", partner_two="Max", date=dt.date(2026, 5, 2))
    planner_co = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    photo_co = make_supplier(users=(photographer,))
    florist_co = make_supplier(category=Supplier.Category.FLORIST, users=(florist,))
    lapsed_co = make_supplier(users=(lapsed,))
    make_booking(supplier=planner_co, wedding=a)
    make_booking(supplier=photo_co, wedding=a)
    make_booking(supplier=lapsed_co, wedding=a, active=False)
    make_booking(supplier=florist_co, wedding=b)
    ceremony = make_item(wedding=a, title="Ceremony", start=(14, 0))
    photos = make_item(wedding=a, title="Photos", start=(15, 0))
    photos.suppliers.add(photo_co)
    dinner = make_item(wedding=a, title="Dinner", start=(18, 0), pinned=True)
    speeches = make_item(wedding=a, title="Speeches", start=(19, 0), key_moment=True)
    return World(
        a=a, b=b, c=c, planner=planner, photographer=photographer, florist=florist,
        couple=couple, staff=staff, lapsed=lapsed, planner_co=planner_co, photo_co=photo_co,
        ceremony=ceremony, photos=photos, dinner=dinner, speeches=speeches,
    )  # fmt: skip


# --- helpers ----------------------------------------------------------------------------


def bearer(user: Any) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token_issue(user=user)}"}


def logged_in(user: Any) -> Client:
    """A session client that enforces CSRF, as a browser's requests are checked."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def with_csrf(client: Client) -> dict[str, str]:
    """Give the client a CSRF cookie; returns the header that proves it knows it."""
    secret = get_random_string(32)
    client.cookies[settings.CSRF_COOKIE_NAME] = secret
    return {settings.CSRF_HEADER_NAME: secret}


def post(client: Client, path: str, body: Any, **headers: str):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, raw, content_type=JSON, **headers)


def ok_json(response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == JSON
    return orjson.loads(response.content)


def error_of(response, status: int, code: str) -> dict[str, Any]:
    """The error object of a JSON error response (PROTOCOL §9), checked for shape."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == JSON
    assert b"Traceback" not in response.content
    body = orjson.loads(response.content)
    assert list(body) == ["error"]
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] == code, error
    return error


def message(text: str = "hello") -> dict[str, Any]:
    return {"event": "message.posted", "payload": {"text": text}}


# --- POST /api/realtime/token -----------------------------------------------------------


def test_token__session_without_csrf_token_is_refused_403(w):
    client = logged_in(w.photographer)

    error_of(post(client, "/api/realtime/token", {}), 403, "csrf_failed")
    # a CSRF cookie with a header that does not match is no better
    with_csrf(client)
    wrong = {settings.CSRF_HEADER_NAME: get_random_string(32)}
    response = post(client, "/api/realtime/token", {}, **wrong)
    error_of(response, 403, "csrf_failed")


def test_token__session_with_csrf_issues_a_token_of_the_user(w):
    client = logged_in(w.photographer)
    headers = with_csrf(client)
    before = time.time()

    body = ok_json(post(client, "/api/realtime/token", {}, **headers))

    assert set(body) == {"token", "expires_at"}
    assert token_authenticate(body["token"]) == w.photographer
    assert body["expires_at"] == token_expires_at(body["token"])
    ttl = settings.REALTIME_TOKEN_TTL
    assert before + ttl <= body["expires_at"] <= time.time() + ttl + 1


def test_token__named_ttl_sets_the_expiry(w):
    client = Client(enforce_csrf_checks=True)
    before = time.time()

    body = ok_json(post(client, "/api/realtime/token", {"ttl": 60}, **bearer(w.couple)))

    assert before + 60 <= body["expires_at"] <= time.time() + 61
    assert token_authenticate(body["token"]) == w.couple


def test_token__bearer_token_authenticates_without_csrf(w):
    client = Client(enforce_csrf_checks=True)

    body = ok_json(post(client, "/api/realtime/token", {}, **bearer(w.planner)))

    assert token_authenticate(body["token"]) == w.planner


@pytest.mark.parametrize("header", ["Bearer not-a-token", "Bearer ", "Bearer a.b"])
def test_token__bad_bearer_token_is_401(w, header):
    response = post(Client(), "/api/realtime/token", {}, HTTP_AUTHORIZATION=header)

    error_of(response, 401, "unauthenticated")


def test_token__anonymous_is_401_json(w):
    error_of(post(Client(), "/api/realtime/token", {}), 401, "unauthenticated")


def test_token__get_is_405_json(w):
    response = logged_in(w.photographer).get("/api/realtime/token")

    error_of(response, 405, "method_not_allowed")


@pytest.mark.parametrize(
    "body",
    [
        {"ttl": 0},
        {"ttl": -5},
        {"ttl": "60"},
        {"ttl": 1.5},
        {"ttl": True},
        {"ttl": 10**12},
        b"not json",
        b"[60]",
    ],
    ids=["zero", "negative", "string", "float", "bool", "too-long", "not-json", "not-object"],
)
def test_token__bad_ttl_or_body_is_400(w, body):
    response = post(Client(), "/api/realtime/token", body, **bearer(w.photographer))

    error_of(response, 400, "bad_request")


# --- GET /api/weddings/ -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("photographer", {"a"}),
        ("planner", {"a"}),
        ("florist", {"b"}),
        ("couple", {"a"}),
        ("staff", {"a", "b", "c"}),
        ("lapsed", set()),
    ],
)
def test_weddings__each_role_sees_exactly_its_weddings(w, role, expected):
    response = Client().get("/api/weddings/", **bearer(getattr(w, role)))

    weddings = ok_json(response)["weddings"]
    assert [item["id"] for item in weddings] == [
        wedding.pk for wedding in sorted((getattr(w, name) for name in expected), key=_by_date)
    ]


def _by_date(wedding: Wedding) -> tuple:
    return (wedding.date, wedding.ceremony_time, wedding.pk)


def test_weddings__summary_has_the_documented_fields(w):
    weddings = ok_json(Client().get("/api/weddings/", **bearer(w.couple)))["weddings"]

    assert weddings == [
        {
            "id": w.a.pk,
            "topic": f"wedding:{w.a.pk}",
            "couple": w.a.couple_names,
            "date": "2026-06-13",
            "ceremony_time": "14:00",
            "time_zone": "Europe/London",
            "venue": "Old Barn",
            "venue_address": w.a.venue_address,
            "guest_count": 80,
            "status": w.a.status,
            "notes": w.a.notes,
        }
    ]


def test_weddings__session_login_works_for_reads_without_csrf(w):
    weddings = ok_json(logged_in(w.florist).get("/api/weddings/"))["weddings"]

    assert [item["id"] for item in weddings] == [w.b.pk]


def test_weddings__anonymous_is_401(w):
    error_of(Client().get("/api/weddings/"), 401, "unauthenticated")


# --- GET /api/weddings/<id>/ ------------------------------------------------------------


@SNAPSHOT_DB
def test_snapshot__has_wedding_timeline_suppliers_statuses_and_seq(w):
    body = ok_json(Client().get(w.path(w.a), **bearer(w.photographer)))

    assert set(body) == {"wedding", "timeline", "suppliers", "statuses", "seq", "epoch"}
    listed = ok_json(Client().get("/api/weddings/", **bearer(w.photographer)))["weddings"]
    assert body["wedding"] == listed[0]
    assert [item["title"] for item in body["timeline"]] == [
        "Ceremony",
        "Photos",
        "Dinner",
        "Speeches",
    ]
    photos = body["timeline"][1]
    # times in UTC with "Z": 15:00 in London (BST) is 14:00 UTC
    assert photos["starts_at"].endswith("Z") and photos["ends_at"].endswith("Z")
    assert _utc(photos["starts_at"]) == dt.datetime(2026, 6, 13, 14, 0, tzinfo=dt.UTC)
    assert _utc(photos["ends_at"]) == dt.datetime(2026, 6, 13, 14, 30, tzinfo=dt.UTC)
    assert photos == {
        "id": w.photos.pk,
        "title": "Photos",
        "starts_at": photos["starts_at"],
        "ends_at": photos["ends_at"],
        "location": "",
        "supplier_ids": [w.photo_co.pk],
        "status": "planned",
        "key_moment": False,
        "pinned": False,
        "version": 1,
    }
    # the lapsed booking is not listed
    assert sorted(s["id"] for s in body["suppliers"]) == sorted([w.planner_co.pk, w.photo_co.pk])
    assert {"id", "name", "category"} == set(body["suppliers"][0])
    assert body["statuses"] == []
    assert body["seq"] == 0


@SNAPSHOT_DB
def test_snapshot__seq_is_the_topics_current_seq(w):
    for i in range(3):
        event_publish(topic=w.a.topic, event="message.posted", payload={"text": f"m{i}"},
                      user=w.photographer)  # fmt: skip

    body = ok_json(Client().get(w.path(w.a), **bearer(w.couple)))

    assert body["seq"] == selectors.topic_seq(w.a.topic) == 3


@SNAPSHOT_DB
def test_snapshot__vendor_status_published_appears_in_statuses(w):
    # given
    result = event_publish(
        topic=w.a.topic,
        event="vendor.status",
        payload={"supplier_id": w.photo_co.pk, "status": "running_late", "minutes_late": 10},
        user=w.photographer,
    )
    # when
    body = ok_json(Client().get(w.path(w.a), **bearer(w.planner)))
    # then
    assert body["seq"] == result.event.seq
    [status] = body["statuses"]
    assert status["supplier_id"] == w.photo_co.pk
    assert status["status"] == "running_late" and status["minutes_late"] == 10
    assert status["seq"] == result.event.seq


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _reduce(snapshot: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply event frames to a snapshot, as a client keeps its state."""
    state = copy.deepcopy(snapshot)
    items = {item["id"]: item for item in state["timeline"]}
    statuses = {status["supplier_id"]: status for status in state["statuses"]}
    for frame in events:
        name, payload = frame["event"], frame["payload"]
        if name in ("timeline.item.created", "timeline.item.updated"):
            items[payload["id"]] = payload
        elif name == "timeline.item.deleted":
            del items[payload["id"]]
        elif name == "timeline.shifted":
            items.update({item["id"]: item for item in payload["items"]})
        elif name == "vendor.status":
            statuses[payload["supplier_id"]] = {**payload, "seq": frame["seq"], "ts": frame["ts"]}
        elif name == "wedding.updated":
            state["wedding"].update(payload)
        state["seq"] = frame["seq"]
    state["timeline"] = sorted(
        items.values(), key=lambda item: (_utc(item["starts_at"]), item["id"])
    )
    state["statuses"] = [statuses[supplier_id] for supplier_id in sorted(statuses)]
    return state


@SNAPSHOT_DB
def test_snapshot_state__snapshot_plus_events_since_its_seq_is_a_fresh_snapshot(w):
    # given a snapshot S0 taken after some history
    topic, client, auth = w.a.topic, Client(), bearer(w.couple)
    event_publish(topic=topic, event="vendor.status", user=w.photographer,
                  payload={"supplier_id": w.photo_co.pk, "status": "en_route"})  # fmt: skip
    event_publish(topic=topic, event="message.posted", payload={"text": "hi"}, user=w.photographer)
    s0 = ok_json(client.get(w.path(w.a), **auth))
    assert s0["seq"] == 2 and len(s0["statuses"]) == 1

    # when a mix of events is published
    def publish(event: str, payload: dict[str, Any], user: Any = w.planner) -> dict[str, Any]:
        return event_publish(topic=topic, event=event, payload=payload, user=user).event.payload

    updated = publish(
        "timeline.item.updated",
        {"id": w.ceremony.pk, "version": 1, "title": "Vows", "location": "Lawn"},
    )
    publish("timeline.shifted", {"from_item_id": w.photos.pk, "minutes": 15})
    publish(
        "timeline.item.created",
        {"title": "First dance", "starts_at": "2026-06-13T20:30:00+01:00", "key_moment": True},
    )
    publish("message.posted", {"text": "running a little late"}, user=w.photographer)
    publish("timeline.item.deleted", {"id": w.ceremony.pk, "version": updated["version"]})
    publish(
        "vendor.status", {"supplier_id": w.photo_co.pk, "status": "arrived"}, user=w.photographer
    )
    publish("wedding.updated", {"guest_count": 92, "venue": "New Barn", "notes": "rain plan B"})
    publish("timeline.item.updated", {"id": w.dinner.pk, "version": 1, "status": "delayed"},
            user=w.staff)  # fmt: skip
    history = ok_json(client.get(w.path(w.a, f"events?since={s0['seq']}"), **auth))

    # then S0 + the events is exactly a fresh snapshot
    fresh = ok_json(client.get(w.path(w.a), **auth))
    assert [frame["seq"] for frame in history["events"]] == list(range(3, 11))
    assert history["next_since"] is None and history["recovered"] is True
    assert _reduce(s0, history["events"]) == fresh
    assert fresh["seq"] == 10
    # and the reducer saw real changes (the test is not vacuous)
    assert fresh != s0
    assert [item["title"] for item in fresh["timeline"]] == [
        "Photos", "Dinner", "Speeches", "First dance",
    ]  # fmt: skip
    assert fresh["wedding"]["venue"] == "New Barn"


@SNAPSHOT_DB
@pytest.mark.parametrize("suffix", ["", "events"])
def test_snapshot__hidden_wedding_is_404_identical_to_missing_one(w, suffix):
    client, auth = Client(), bearer(w.photographer)

    hidden = client.get(w.path(w.b, suffix), **auth)
    missing = client.get(w.path(MISSING_ID, suffix), **auth)

    error_of(hidden, 404, "not_found")
    assert hidden.content.replace(f"wedding:{w.b.pk}".encode(), b"wedding:<id>") == (
        missing.content.replace(f"wedding:{MISSING_ID}".encode(), b"wedding:<id>")
    )


def test_snapshot__anonymous_is_401(w):
    error_of(Client().get(w.path(w.a)), 401, "unauthenticated")


def test_snapshot__post_is_405(w):
    error_of(post(Client(), w.path(w.a), {}, **bearer(w.planner)), 405, "method_not_allowed")


# --- GET /api/weddings/<id>/ through the ASGI application (the server's path) -------------
# A bearer read takes the lean path (wedsync/token_api.py) and is checked against the
# user's cached access; a browser's session read takes the full middleware chain.


class Asgi:
    """GET requests to ``wedsync.asgi.application``, as the server runs it."""

    @staticmethod
    async def get(path: str, *, token: str | None = None, session: str | None = None):
        headers = [(b"host", b"testserver")]
        if token is not None:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        if session is not None:
            headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()))
        comm = HttpCommunicator(application, "GET", path, headers=headers)
        response = await comm.get_response(timeout=10)
        await comm.wait(timeout=10)  # the handler's end of request (signals) ran
        status, body = response["status"], orjson.loads(response["body"])
        headers = {k.decode().lower(): v.decode() for k, v in response["headers"]}
        assert headers["content-type"] == JSON
        return status, headers, body


def session_of(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


@SNAPSHOT_DB
async def test_snapshot_asgi__bearer_and_session_reads_return_the_same_snapshot(w):
    path = w.path(w.a)
    token = await database_sync_to_async(token_issue)(user=w.photographer)
    session = await database_sync_to_async(session_of)(w.photographer)

    by_token = await Asgi.get(path, token=token)
    by_session = await Asgi.get(path, session=session)

    assert by_token[0] == by_session[0] == 200
    assert by_token[2] == by_session[2]
    assert by_token[2]["wedding"]["id"] == w.a.pk
    assert "x-wedsync-read-only" not in by_token[1]


@SNAPSHOT_DB
@pytest.mark.parametrize("reader", ["florist", "lapsed"])
async def test_snapshot_asgi__no_access_is_404_identical_to_a_missing_wedding(w, reader):
    token = await database_sync_to_async(token_issue)(user=getattr(w, reader))

    hidden = await Asgi.get(w.path(w.a), token=token)
    missing = await Asgi.get(w.path(MISSING_ID), token=token)

    assert hidden[0] == missing[0] == 404
    assert hidden[2]["error"]["code"] == "not_found"
    assert str(hidden[2]).replace(str(w.a.pk), "<id>") == str(missing[2]).replace(
        str(MISSING_ID), "<id>"
    )


@SNAPSHOT_DB
async def test_snapshot_asgi__staff_read_any_wedding_and_a_missing_one_is_404(w):
    token = await database_sync_to_async(token_issue)(user=w.staff)

    assert (await Asgi.get(w.path(w.b), token=token))[0] == 200
    assert (await Asgi.get(w.path(MISSING_ID), token=token))[0] == 404


@SNAPSHOT_DB
async def test_snapshot_asgi__bad_or_expired_token_is_401_json(w, monkeypatch):
    token = await database_sync_to_async(token_issue)(user=w.planner, ttl=60)

    bad = await Asgi.get(w.path(w.a), token=token + "x")
    monkeypatch.setattr("realtime.tokens._now", lambda: time.time() + 120)
    expired = await Asgi.get(w.path(w.a), token=token)

    assert (bad[0], bad[2]["error"]["code"]) == (401, "unauthenticated")
    assert (expired[0], expired[2]["error"]["code"]) == (401, "unauthenticated")
    assert "expired" in expired[2]["error"]["message"]


def _revoke_booking(w: World) -> None:
    booking = w.photo_co.bookings.get(wedding=w.a)
    booking.active = False
    booking.save()


def _revoke_membership(w: World) -> None:
    w.photo_co.memberships.filter(user=w.photographer).delete()


def _revoke_couple(w: World) -> None:
    w.a.couple.remove(w.couple)


@SNAPSHOT_DB
@pytest.mark.parametrize(
    ("reader", "revoke"),
    [
        ("photographer", _revoke_booking),
        ("photographer", _revoke_membership),
        ("couple", _revoke_couple),
    ],
)
async def test_snapshot_asgi__revoked_access_stops_the_next_read(w, reader, revoke):
    # given a reader whose access is cached by a first read
    token = await database_sync_to_async(token_issue)(user=getattr(w, reader))
    assert (await Asgi.get(w.path(w.a), token=token))[0] == 200

    # when the access is revoked
    await database_sync_to_async(revoke)(w)

    # then the very next read is refused
    status, _, body = await Asgi.get(w.path(w.a), token=token)
    assert (status, body["error"]["code"]) == (404, "not_found")


@SNAPSHOT_DB
async def test_snapshot_asgi__deactivated_user_is_refused_by_token_and_session(w):
    token = await database_sync_to_async(token_issue)(user=w.planner)
    session = await database_sync_to_async(session_of)(w.planner)
    assert (await Asgi.get(w.path(w.a), token=token))[0] == 200

    w.planner.is_active = False
    await database_sync_to_async(w.planner.save)()

    assert (await Asgi.get(w.path(w.a), token=token))[0] == 401
    assert (await Asgi.get(w.path(w.a), session=session))[0] == 401


@SNAPSHOT_DB
async def test_snapshot_asgi__warm_bearer_read_makes_no_query(w, monkeypatch):
    # given a warm cache (user, access, snapshot) and a fresh database probe
    token = await database_sync_to_async(token_issue)(user=w.photographer)
    assert (await Asgi.get(w.path(w.a), token=token))[0] == 200
    monkeypatch.setattr(realtime_db, "REACHABLE_MAX_AGE_S", 3600.0)
    await asyncio.gather(*realtime_db._probes.values())  # one started by that read
    statements: list[str] = []
    execute = CursorWrapper.execute

    def counted(cursor: Any, sql: str, params: Any = None) -> Any:
        statements.append(sql)
        return execute(cursor, sql, params)

    monkeypatch.setattr(CursorWrapper, "execute", counted)

    # when
    for _ in range(3):
        assert (await Asgi.get(w.path(w.a), token=token))[0] == 200

    # then: the visibility check, the token's user and the snapshot came from the cache
    assert statements == []


# --- GET /api/weddings/<id>/events ------------------------------------------------------


def test_history__pages_with_next_since_until_null(w):
    # given seven events
    for i in range(7):
        event_publish(topic=w.a.topic, event="message.posted", payload={"text": f"m{i}"},
                      user=w.photographer)  # fmt: skip
    client, auth = Client(), bearer(w.planner)
    # when paging three at a time
    pages, since = [], 0
    while since is not None:
        page = ok_json(client.get(w.path(w.a, f"events?since={since}&limit=3"), **auth))
        pages.append(page)
        since = page["next_since"]
        assert len(pages) < 10
    # then
    assert [[e["seq"] for e in page["events"]] for page in pages] == [[1, 2, 3], [4, 5, 6], [7]]
    assert [page["next_since"] for page in pages] == [3, 6, None]
    assert all(page["seq"] == 7 and page["recovered"] for page in pages)
    assert all(page["topic"] == w.a.topic for page in pages)
    first = pages[0]["events"][0]
    assert first["type"] == "event" and first["topic"] == w.a.topic
    assert first["event"] == "message.posted" and first["payload"] == {"text": "m0"}
    assert first["actor"] == {"user_id": w.photographer.pk, "supplier_id": w.photo_co.pk}
    assert first["ts"].endswith("Z")


def test_history__default_limit_is_100(w):
    Event.objects.bulk_create(
        Event(topic=w.a.topic, seq=seq, event="message.posted", payload={"text": "x"})
        for seq in range(1, 106)
    )
    TopicCursor.objects.create(topic=w.a.topic, last_seq=105)

    page = ok_json(Client().get(w.path(w.a, "events"), **bearer(w.couple)))

    assert len(page["events"]) == 100 and page["next_since"] == 100


@pytest.mark.parametrize("query", ["limit=1", "limit=1000", "since=0&limit=1000"])
def test_history__limit_within_bounds_is_accepted(w, query):
    event_publish(
        topic=w.a.topic, event="message.posted", payload={"text": "x"}, user=w.photographer
    )

    page = ok_json(Client().get(w.path(w.a, f"events?{query}"), **bearer(w.couple)))

    assert [e["seq"] for e in page["events"]] == [1]


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "limit=x", "limit=", "since=-1", "since=x", "since=1.5"]
)
def test_history__bad_limit_or_since_is_400(w, query):
    response = Client().get(w.path(w.a, f"events?{query}"), **bearer(w.couple))

    error_of(response, 400, "bad_request")


def test_history__since_beyond_seq_is_not_recovered_and_has_no_events(w):
    for text in ("a", "b"):
        event_publish(topic=w.a.topic, event="message.posted", payload={"text": text},
                      user=w.photographer)  # fmt: skip

    page = ok_json(Client().get(w.path(w.a, "events?since=5"), **bearer(w.couple)))

    assert page == {
        "topic": w.a.topic, "seq": 2, "recovered": False, "events": [], "next_since": None,
        "epoch": ANY,
    }  # fmt: skip


def test_history__since_at_seq_is_recovered_with_no_events(w):
    event_publish(
        topic=w.a.topic, event="message.posted", payload={"text": "a"}, user=w.photographer
    )

    page = ok_json(Client().get(w.path(w.a, "events?since=1"), **bearer(w.couple)))

    assert page["recovered"] is True and page["events"] == [] and page["next_since"] is None


# --- POST /api/weddings/<id>/events -----------------------------------------------------


def test_publish__bearer_publish_is_201_with_seq_and_stored(w):
    client = Client(enforce_csrf_checks=True)

    response = post(client, w.path(w.a, "events"), message("hi"), **bearer(w.photographer))

    body = ok_json(response, 201)

    assert body == {"status": "ok", "topic": w.a.topic, "seq": 1}
    stored = Event.objects.get(topic=w.a.topic, seq=1)
    assert stored.event == "message.posted" and stored.payload == {"text": "hi"}
    assert stored.actor_user_id == w.photographer.pk


def test_publish__same_idempotency_key_is_200_duplicate_with_the_first_seq(w):
    client, auth = Client(), bearer(w.photographer)
    post(client, w.path(w.a, "events"), message("before"), **auth)
    frame = {**message("once"), "idempotency_key": "key-1"}

    first = ok_json(post(client, w.path(w.a, "events"), frame, **auth), 201)
    second = ok_json(post(client, w.path(w.a, "events"), frame, **auth), 200)

    assert first == {"status": "ok", "topic": w.a.topic, "seq": 2}
    assert second == {**first, "duplicate": True}
    assert Event.objects.filter(topic=w.a.topic).count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event": "message.posted", "payload": {}}, "payload.text"),
        ({"event": "message.posted", "payload": {"text": "  "}}, "payload.text"),
        ({"event": "message.posted", "payload": {"text": 5}}, "payload.text"),
        ({"event": "message.posted", "payload": {"text": "x", "extra": 1}}, "payload.extra"),
        ({"event": "message.posted", "payload": []}, "payload"),
        ({"event": "no.such.event", "payload": {"text": "x"}}, "event"),
        ({"payload": {"text": "x"}}, "event"),
        ({"event": 7, "payload": {"text": "x"}}, "event"),
        ({**message(), "idempotency_key": "has space"}, "idempotency_key"),
        ({**message(), "idempotency_key": 5}, "idempotency_key"),
        ({**message(), "topic": "wedding:1"}, "topic"),  # unknown body field
        ({**message(), "ref": "1"}, "ref"),
    ],
)
def test_publish__invalid_body_is_400_naming_the_field(w, body, field):
    response = post(Client(), w.path(w.a, "events"), body, **bearer(w.photographer))

    error = error_of(response, 400, "invalid_payload")
    assert error["field"] == field
    assert not Event.objects.exists()


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'"text"', b"null", b"\xff\xfe"])
def test_publish__body_not_a_json_object_is_400(w, raw):
    response = post(Client(), w.path(w.a, "events"), raw, **bearer(w.photographer))

    error_of(response, 400, "bad_request")
    assert not Event.objects.exists()


@pytest.mark.parametrize("size", [64 * 1024 + 1, 3 * 1024 * 1024])
def test_publish__body_over_64_kib_is_413(w, size):
    raw = orjson.dumps(message("x" * size))
    assert len(raw) > 64 * 1024

    response = post(Client(), w.path(w.a, "events"), raw, **bearer(w.photographer))

    error_of(response, 413, "too_large")
    assert not Event.objects.exists()


def test_publish__body_of_exactly_64_kib_is_read(w):
    # padded with whitespace to the 64 KiB body limit: still read and accepted
    raw = orjson.dumps(message("x" * 4000))
    raw += b" " * (64 * 1024 - len(raw))

    response = post(Client(), w.path(w.a, "events"), raw, **bearer(w.photographer))

    ok_json(response, 201)


def test_publish__stale_timeline_version_is_409_with_current_item(w):
    client, auth = Client(), bearer(w.planner)

    def update(title: str) -> dict[str, Any]:
        payload = {"id": w.ceremony.pk, "version": 1, "title": title}
        return {"event": "timeline.item.updated", "payload": payload}

    ok_json(post(client, w.path(w.a, "events"), update("Vows"), **auth), 201)

    stale = post(client, w.path(w.a, "events"), update("Other"), **auth)

    error = error_of(stale, 409, "conflict")
    assert error["current"]["id"] == w.ceremony.pk
    assert error["current"]["title"] == "Vows" and error["current"]["version"] == 2
    assert Event.objects.filter(topic=w.a.topic).count() == 1
    w.ceremony.refresh_from_db()
    assert w.ceremony.title == "Vows"


@pytest.mark.parametrize("body", [message(), b"{not json", {"event": "x"}])
def test_publish__hidden_wedding_is_404_identical_to_missing_one(w, body):
    client, auth = Client(), bearer(w.photographer)

    hidden = post(client, w.path(w.b, "events"), body, **auth)
    missing = post(client, w.path(MISSING_ID, "events"), body, **auth)

    error_of(hidden, 404, "not_found")
    assert hidden.content.replace(f"wedding:{w.b.pk}".encode(), b"wedding:<id>") == (
        missing.content.replace(f"wedding:{MISSING_ID}".encode(), b"wedding:<id>")
    )
    # and the same as the GET endpoints say
    snapshot = Client().get(w.path(w.b), **auth)
    assert hidden.content == snapshot.content
    assert not Event.objects.exists()


@pytest.mark.parametrize("who", ["photographer", "staff"])
def test_events__an_impossible_wedding_id_is_the_same_404(w, who):
    # an id past any topic's (PROTOCOL §3) and past PostgreSQL's bigint
    client, auth = Client(), bearer(getattr(w, who))
    path = w.path(2**70, "events")

    read = client.get(path, **auth)
    publish = post(client, path, message(), **auth)

    for response in (read, publish):
        error_of(response, 404, "not_found")
    assert not Event.objects.exists()


def test_publish__session_without_csrf_is_403_and_with_csrf_is_201(w):
    client = logged_in(w.photographer)

    refused = post(client, w.path(w.a, "events"), message("no csrf"))
    accepted = post(client, w.path(w.a, "events"), message("with csrf"), **with_csrf(client))

    error_of(refused, 403, "csrf_failed")
    assert ok_json(accepted, 201)["seq"] == 1
    assert list(Event.objects.values_list("payload", flat=True)) == [{"text": "with csrf"}]


def test_publish__anonymous_is_401(w):
    error_of(post(Client(), w.path(w.a, "events"), message()), 401, "unauthenticated")
    assert not Event.objects.exists()


def test_publish__put_is_405(w):
    response = Client().put(w.path(w.a, "events"), b"{}", content_type=JSON, **bearer(w.planner))

    error_of(response, 405, "method_not_allowed")


# --- any /api/ path ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/nothing-here", "/api/weddings/abc/", "/api/weddings/1/events/extra"]
)
def test_unknown_api_path__is_404_json(w, path):
    error_of(Client().get(path, **bearer(w.staff)), 404, "not_found")


@pytest.mark.django_db
def test_api__disallowed_host_gets_json_400_not_an_html_page(client):
    response = client.get("/api/weddings/", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "bad_request"
