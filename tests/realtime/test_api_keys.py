"""API keys of the platform's backend (ADR 0024), through the real admin and the HTTP API,
on real PostgreSQL and Redis: created in admin (shown once), publishing with idempotency
keys and the members' catalogue validation, scoped, expiring, revoked at once (in another
server process too), rate-limited per key, and audited."""

from __future__ import annotations

import datetime as dt
import http.client
import re
import time
from typing import Any

import orjson
import pytest
from django.test import Client
from django.utils import timezone

from realtime.models import ApiKey, ApiKeyUse, Event
from tests.factories import make_user, make_wedding
from tests.servers import Server

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(60),
]

JSON = "application/json"
KEY_RE = re.compile(r"wsk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
ADD = "/admin/realtime/apikey/add/"
CHANGELIST = "/admin/realtime/apikey/"


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(make_user(is_staff=True, is_superuser=True))
    return client


def create_key(admin_client: Client, **fields: Any) -> str:
    """A key created through the admin's add form; the key read from the page it shows."""
    data = {
        "name": "crm-sync",
        "can_read": "",
        "can_publish": "on",
        "wedding_ids": "",
        "topics": "",
        "event_types": "message.posted",
        "expires_at_0": "",
        "expires_at_1": "",
        **fields,
    }
    response = admin_client.post(ADD, data, follow=True)
    assert response.status_code == 200
    found = KEY_RE.findall(response.content.decode())
    assert len(found) == 1, response.content.decode()[:3000]
    return found[0]


def publish(key: str, wedding_id: int, body: dict[str, Any]) -> Any:
    return Client().post(
        f"/api/weddings/{wedding_id}/events",
        orjson.dumps(body),
        content_type=JSON,
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def get(key: str, path: str) -> Any:
    return Client().get(path, HTTP_AUTHORIZATION=f"Bearer {key}")


def message(text: str = "the cake is here", **extra: Any) -> dict[str, Any]:
    return {"event": "message.posted", "payload": {"text": text}, **extra}


def outcomes(key: str) -> list[tuple[str, int, str]]:
    prefix = key.split("_")[1]
    uses = ApiKeyUse.objects.filter(key__prefix=prefix).order_by("id")
    return [(u.method, u.status, u.outcome) for u in uses]


def test_admin__shows_the_key_once_and_stores_only_its_hash(admin_client):
    # given / when
    key = create_key(admin_client, topics="wedding:*")

    # then
    row = ApiKey.objects.get()
    assert row.prefix == key.split("_")[1]
    assert key.split("_", 2)[2] not in row.secret_hash
    assert row.user.username == f"apikey.{row.prefix}"
    assert not row.user.has_usable_password() and not row.user.is_staff
    page = admin_client.get(CHANGELIST).content.decode()
    assert f"wsk_{row.prefix}_…" in page and not KEY_RE.search(page)
    change = admin_client.get(f"{CHANGELIST}{row.pk}/change/").content.decode()
    assert not KEY_RE.search(change)


def test_admin__refuses_a_scope_outside_the_catalogue(admin_client):
    data = {"name": "x", "can_publish": "on", "event_types": "nope.*"}
    response = admin_client.post(ADD, data)
    assert "matches no event of the catalogue" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_publish__idempotent_validated_and_the_actor_names_the_key(admin_client):
    # given
    wedding = make_wedding()
    key = create_key(admin_client, wedding_ids=str(wedding.pk))
    row = ApiKey.objects.get()

    # when: a publish and its retry with the same idempotency key
    first = publish(key, wedding.pk, message(idempotency_key="crm-1"))
    again = publish(key, wedding.pk, message(idempotency_key="crm-1"))

    # then: one event, whose actor is the key's service user
    assert first.status_code == 201, first.content
    assert first.json()["actor"] == {"api_key": row.prefix, "name": "crm-sync"}
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["seq"] == first.json()["seq"]
    event = Event.objects.get(topic=wedding.topic)
    assert event.actor_user_id == row.user_id and event.actor_supplier_id is None

    # and: the members' catalogue validation
    blank = publish(key, wedding.pk, message("   "))
    assert blank.status_code == 400
    assert blank.json()["error"]["code"] == "invalid_payload"
    assert blank.json()["error"]["field"] == "payload.text"
    unknown = publish(key, wedding.pk, {"event": "nope.nothing", "payload": {}})
    assert unknown.json()["error"] == {
        "code": "invalid_payload",
        "message": "event: unknown event 'nope.nothing'",
        "field": "event",
    }
    assert Event.objects.filter(topic=wedding.topic).count() == 1

    # and: every use audited, with the topic and seq of a publish
    assert outcomes(key) == [
        ("POST", 201, "ok"),
        ("POST", 200, "duplicate"),
        ("POST", 400, "invalid_payload"),
        ("POST", 400, "invalid_payload"),
    ]
    use = ApiKeyUse.objects.order_by("id").first()
    assert (use.topic, use.seq, use.path) == (
        wedding.topic,
        event.seq,
        f"/api/weddings/{wedding.pk}/events",
    )
    assert ApiKey.objects.get().last_used_at is not None


def test_scope__other_wedding_other_event_and_other_routes_refused(admin_client):
    # given
    mine, other = make_wedding(), make_wedding()
    key = create_key(admin_client, topics=f"wedding:{mine.pk}", can_read="on")

    # then: a wedding outside the scope is a hidden wedding (404), as for members
    assert publish(key, other.pk, message()).status_code == 404
    assert get(key, f"/api/weddings/{other.pk}/events").status_code == 404
    assert get(key, f"/api/weddings/{other.pk}/").status_code == 404
    # an event type outside it, 403
    raised = publish(key, mine.pk, {"event": "emergency.raised", "payload": {"text": "fire"}})
    assert raised.status_code == 403 and raised.json()["error"]["code"] == "forbidden"
    # any route but the publish, the history and the snapshot, 403
    for path in ("/api/weddings/", "/api/realtime/connections"):
        assert get(key, path).json()["error"]["code"] == "forbidden"
    token = Client().post(
        "/api/realtime/token", b"{}", content_type=JSON, HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert token.status_code == 403
    # a wrong secret of a real prefix, and garbage, 401 (not audited: not the key's use)
    assert (
        publish(key[:-1] + ("A" if key[-1] != "A" else "B"), mine.pk, message()).status_code == 401
    )
    assert publish("wsk_nothing", mine.pk, message()).status_code == 401

    # and: inside it, reads and publishes work
    assert publish(key, mine.pk, message()).status_code == 201
    history = get(key, f"/api/weddings/{mine.pk}/events")
    assert history.status_code == 200 and history.json()["events"][0]["event"] == "message.posted"
    snapshot = get(key, f"/api/weddings/{mine.pk}/")
    assert snapshot.status_code == 200 and snapshot.json()["wedding"]["id"] == mine.pk
    assert [o[1:] for o in outcomes(key)].count((403, "forbidden")) == 4


def test_scope__read_only_key_cannot_publish_publish_only_key_cannot_read(admin_client):
    wedding = make_wedding()
    reader = create_key(
        admin_client,
        name="reader",
        topics="wedding:*",
        can_read="on",
        can_publish="",
        event_types="",
    )
    writer = create_key(admin_client, name="writer", topics="wedding:*")

    refused = publish(reader, wedding.pk, message())
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert get(reader, f"/api/weddings/{wedding.pk}/events").status_code == 200
    assert get(writer, f"/api/weddings/{wedding.pk}/events").status_code == 403
    assert get(writer, f"/api/weddings/{wedding.pk}/").status_code == 403
    assert not Event.objects.filter(topic=wedding.topic).exists()


def test_expired_key__refused_and_audited(admin_client):
    wedding = make_wedding()
    key = create_key(admin_client, topics="wedding:*")
    assert publish(key, wedding.pk, message()).status_code == 201
    row = ApiKey.objects.get()

    # when: it expires (saved through the admin: the cached row goes with it)
    past = timezone.localtime() - dt.timedelta(minutes=1)
    data = {
        "name": row.name,
        "can_publish": "on",
        "topics": "wedding:*",
        "event_types": "message.posted",
        "expires_at_0": past.strftime("%Y-%m-%d"),
        "expires_at_1": past.strftime("%H:%M:%S"),
    }
    assert admin_client.post(f"{CHANGELIST}{row.pk}/change/", data).status_code == 302

    # then
    response = publish(key, wedding.pk, message())
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]
    assert outcomes(key)[-1] == ("POST", 401, "expired")


def test_revoked_key__refused_at_once_in_another_server_process(admin_client):
    # given: a key whose row the server process has cached by using it
    wedding = make_wedding()
    key = create_key(admin_client, topics="wedding:*", can_read="on")
    server = Server("uvicorn")
    try:

        def server_read() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
            try:
                conn.request(
                    "GET",
                    f"/api/weddings/{wedding.pk}/events?since=0",
                    headers={"Host": "127.0.0.1", "Authorization": f"Bearer {key}"},
                )
                response = conn.getresponse()
                response.read()
                return response.status
            finally:
                conn.close()

        def server_publish(text: str) -> tuple[int, dict[str, Any]]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
            try:
                conn.request(
                    "POST",
                    f"/api/weddings/{wedding.pk}/events",
                    body=orjson.dumps(message(text)),
                    headers={
                        "Host": "127.0.0.1",
                        "Content-Type": JSON,
                        "Authorization": f"Bearer {key}",
                    },
                )
                response = conn.getresponse()
                return response.status, orjson.loads(response.read())
            finally:
                conn.close()

        assert server_publish("before")[0] == 201
        assert publish(key, wedding.pk, message("here too")).status_code == 201

        # when: revoked through the admin action of this process
        row = ApiKey.objects.get()
        action = {"action": "revoke", "_selected_action": [row.pk]}
        assert admin_client.post(CHANGELIST, action).status_code == 302

        # then: refused on the next request here; there as soon as the cache's
        # invalidation reaches that process (milliseconds; bounded by the L1 lifetime,
        # 5 s, should the message be lost), which reads tell without storing anything
        assert publish(key, wedding.pk, message()).status_code == 401
        deadline = time.monotonic() + 5
        while server_read() != 401:
            assert time.monotonic() < deadline, "the revoked key still works elsewhere"
            time.sleep(0.05)
        status, body = server_publish("after")
        assert status == 401 and "revoked" in body["error"]["message"]
    finally:
        server.stop()
    assert Event.objects.filter(topic=wedding.topic).count() == 2
    assert [o[2] for o in outcomes(key)][-2:] == ["revoked", "revoked"]


def test_rate_limit__429_after_the_burst_per_key(admin_client, settings):
    # given
    settings.REALTIME_API_KEY_PUBLISH_RATE = 0.5
    settings.REALTIME_API_KEY_PUBLISH_BURST = 3
    wedding = make_wedding()
    key = create_key(admin_client, topics="wedding:*")
    other = create_key(admin_client, name="other", topics="wedding:*")

    # when
    statuses = [publish(key, wedding.pk, message(f"m{i}")).status_code for i in range(4)]

    # then
    assert statuses == [201, 201, 201, 429]
    error = publish(key, wedding.pk, message()).json()["error"]
    assert error["code"] == "rate_limited" and error["retry_after_ms"] > 0
    assert publish(other, wedding.pk, message()).status_code == 201  # its own budget
    assert outcomes(key)[-1] == ("POST", 429, "rate_limited")
