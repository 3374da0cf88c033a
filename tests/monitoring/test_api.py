"""The metrics API (PROTOCOL §9) and the access rules of /metrics, through Django's test
client: who may read and act, what comes back, and what a staff action changes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import Client, override_settings
from django.utils import timezone
from django.utils.crypto import get_random_string

from monitoring import services
from monitoring.models import Alert
from realtime.presence import get_presence_store
from realtime.tokens import token_issue
from scaling.models import WeddingDayModeChange
from scaling.selectors import wedding_day_mode
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from wedsync.celery import app as celery_app

URL = "/api/performance/realtime/metrics"
JSON = "application/json"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people() -> dict[str, Any]:
    staff = make_user(is_staff=True)
    vendor = make_user()
    wedding = make_wedding(date=timezone.now().date(), time_zone="UTC", venue_name="Hartwell")
    supplier = make_supplier(users=(vendor,))
    make_booking(supplier=supplier, wedding=wedding)
    return {"staff": staff, "vendor": vendor, "wedding": wedding, "supplier": supplier}


def bearer(user: Any) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token_issue(user=user)}"}


def session(user: Any) -> tuple[Client, dict[str, str]]:
    """A CSRF-enforcing session client, and the header that passes its CSRF check."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    secret = get_random_string(32)
    client.cookies[settings.CSRF_COOKIE_NAME] = secret
    return client, {settings.CSRF_HEADER_NAME: secret}


def post(client: Client, body: Any, **headers: str):
    return client.post(URL, orjson.dumps(body), content_type=JSON, **headers)


def error(response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = orjson.loads(response.content)
    assert body["error"]["code"] == code, body
    return body["error"]


# --- who may ---------------------------------------------------------------------------------


def test_auth__anonymous_401_vendor_403_staff_200(people) -> None:
    error(Client().get(URL), 401, "unauthenticated")
    error(Client().get(URL, **bearer(people["vendor"])), 403, "forbidden")
    error(post(Client(), {"action": "warm_cache"}, **bearer(people["vendor"])), 403, "forbidden")
    client, _ = session(people["vendor"])
    error(client.get(URL), 403, "forbidden")

    assert Client().get(URL, **bearer(people["staff"])).status_code == 200
    client, _ = session(people["staff"])
    assert client.get(URL).status_code == 200


def test_auth__staff_session_post_needs_csrf_token_post_does_not(people) -> None:
    client, csrf = session(people["staff"])
    body = {"action": "wedding_day_mode", "enabled": True, "reason": "Saturday"}

    error(post(client, body), 403, "csrf_failed")
    assert post(client, body, **csrf).status_code == 200
    by_token = post(Client(enforce_csrf_checks=True), body, **bearer(people["staff"]))
    assert by_token.status_code == 200


# --- what GET says -------------------------------------------------------------------------


def test_get__figures_history_alerts_and_todays_weddings_with_connected_vendors(people) -> None:
    # given: an open alert, a snapshot, and the vendor present on the wedding's topic
    alert, _ = services.alert_observe("error_rate", 0.5, message="errors everywhere")
    services.snapshot_record()
    wedding, supplier = people["wedding"], people["supplier"]
    member = {"user_id": people["vendor"].pk, "name": "Vee", "supplier_id": supplier.pk}
    async_to_sync(get_presence_store().join)(wedding.topic, "conn-test-1", member)

    try:
        body = orjson.loads(Client().get(URL, **bearer(people["staff"])).content)
    finally:
        async_to_sync(get_presence_store().leave)(wedding.topic, "conn-test-1")

    # then
    assert {"current", "history", "alerts", "weddings", "thresholds", "wedding_day_mode",
            "connections", "beat", "escalation", "generated_at"} <= set(body)  # fmt: skip
    assert set(body["current"]) >= {"connections", "deliveries_per_s", "latency", "cache",
                                    "error_rate", "at"}  # fmt: skip
    assert len(body["history"]) == 1
    assert [a["id"] for a in body["alerts"]] == [alert.pk]
    assert body["alerts"][0]["severity"] == "critical"
    assert body["thresholds"]["cache_hit_ratio"]["direction"] == "below"
    today = next(w for w in body["weddings"] if w["id"] == wedding.pk)
    assert today["connected_suppliers"] == 1
    assert today["suppliers"] == [
        {"id": supplier.pk, "name": supplier.name, "category": supplier.category, "connected": 1}
    ]


def test_get__cached_for_seconds_and_a_staff_action_refreshes_it(people) -> None:
    headers = bearer(people["staff"])
    first = orjson.loads(Client().get(URL, **headers).content)
    alert, _ = services.alert_observe("error_rate", 0.5)

    cached = orjson.loads(Client().get(URL, **headers).content)
    assert cached["generated_at"] == first["generated_at"] and cached["alerts"] == []

    post(Client(), {"action": "acknowledge_alert", "alert_id": alert.pk}, **headers)
    fresh = orjson.loads(Client().get(URL, **headers).content)
    assert [(a["id"], a["status"]) for a in fresh["alerts"]] == [(alert.pk, "acknowledged")]


def test_get__history_length_is_one_of_the_choices(people) -> None:
    headers = bearer(people["staff"])

    error(Client().get(URL + "?minutes=7", **headers), 400, "bad_request")
    assert Client().get(URL + "?minutes=1440", **headers).status_code == 200


# --- what POST does --------------------------------------------------------------------------


def test_post__wedding_day_mode_switched_with_reason_and_audited(people) -> None:
    headers = bearer(people["staff"])

    error(post(Client(), {"action": "wedding_day_mode", "enabled": True, "reason": " "},
               **headers), 400, "invalid_payload")  # fmt: skip
    response = post(
        Client(), {"action": "wedding_day_mode", "enabled": True, "reason": "June peak"}, **headers
    )

    assert response.status_code == 200, response.content
    assert orjson.loads(response.content)["wedding_day_mode"]["enabled"] is True
    change = WeddingDayModeChange.objects.get()
    assert (change.enabled, change.reason) == (True, "June peak")
    assert change.changed_by == people["staff"]
    assert wedding_day_mode()["enabled"] is True


def test_post__acknowledge_and_resolve_an_alert(people) -> None:
    headers = bearer(people["staff"])
    alert, _ = services.alert_observe("error_rate", 0.05)

    acked = orjson.loads(
        post(Client(), {"action": "acknowledge_alert", "alert_id": alert.pk}, **headers).content
    )
    assert acked["alert"]["status"] == "acknowledged"
    assert acked["alert"]["acknowledged_by"] == people["staff"].username
    resolved = post(Client(), {"action": "resolve_alert", "alert_id": alert.pk}, **headers)
    assert orjson.loads(resolved.content)["alert"]["status"] == "resolved"
    assert Alert.objects.get().resolved_by == people["staff"]

    error(post(Client(), {"action": "acknowledge_alert", "alert_id": 999999}, **headers),
          404, "not_found")  # fmt: skip
    bad = post(Client(), {"action": "acknowledge_alert", "alert_id": "1"}, **headers)
    assert error(bad, 400, "invalid_payload")["field"] == "alert_id"


def test_post__warm_cache_is_queued(people) -> None:
    # Eager here so the test needs no worker (and leaves nothing in a developer's queue).
    celery_app.conf.task_always_eager = True
    try:
        response = post(Client(), {"action": "warm_cache"}, **bearer(people["staff"]))
    finally:
        celery_app.conf.task_always_eager = False

    assert response.status_code == 202, response.content
    assert orjson.loads(response.content)["task_id"]


def test_post__unknown_action_and_unknown_fields_are_invalid(people) -> None:
    headers = bearer(people["staff"])

    assert (
        error(post(Client(), {"action": "reboot"}, **headers), 400, "invalid_payload")["field"]
        == "action"
    )
    body = {"action": "warm_cache", "force": True}
    assert error(post(Client(), body, **headers), 400, "invalid_payload")["field"] == "force"
    error(Client().put(URL, b"{}", content_type=JSON, **headers), 405, "method_not_allowed")


# --- /metrics access ---------------------------------------------------------------------------


@override_settings(METRICS_ALLOWED_NETWORKS=[], METRICS_TOKEN="scrape-secret-token")
def test_metrics__scrape_token_or_staff_token_else_refused(people) -> None:
    error(Client().get("/metrics"), 401, "unauthenticated")
    error(Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong"), 401, "unauthenticated")
    error(Client().get("/metrics", **bearer(people["vendor"])), 403, "forbidden")

    scraped = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret-token")
    assert scraped.status_code == 200
    assert scraped["Content-Type"].startswith("text/plain")
    assert b"wedsync_events_published_total" in scraped.content
    assert b"wedsync_wedding_day_mode 0.0" in scraped.content
    assert Client().get("/metrics", **bearer(people["staff"])).status_code == 200


@override_settings(METRICS_ALLOWED_NETWORKS=["10.0.0.0/8"], METRICS_TOKEN="")
def test_metrics__allowed_network_needs_no_token_and_an_empty_token_never_matches() -> None:
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    error(Client(REMOTE_ADDR="192.168.1.2").get("/metrics"), 401, "unauthenticated")
    empty = Client(REMOTE_ADDR="192.168.1.2").get("/metrics", HTTP_AUTHORIZATION="Bearer ")
    assert empty.status_code == 401


def test_get__lists_the_latest_scaling_decisions(people) -> None:
    # given: a scaling evaluation stored its first decision
    from scaling.services import scaling_evaluate

    row = scaling_evaluate()
    assert row is not None

    # when
    client = Client()
    client.force_login(people["staff"])
    body = orjson.loads(client.get(URL).content)

    # then the dashboard's panel has it, newest first, with its reason
    assert body["scaling"][0]["id"] == row.pk
    assert body["scaling"][0]["asgi"] == row.asgi_processes
    assert body["scaling"][0]["reason"] == row.reason
