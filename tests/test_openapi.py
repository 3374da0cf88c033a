"""docs/openapi.yaml against the HTTP API's real responses (PROTOCOL §9).

Every status the spec documents for an operation is produced here by a real request
(Django's test client on the real application and database; a real server process for
the benchmark runs) and the response, status, headers and body, is validated against the
spec with openapi-core. The cases and the spec must list the same statuses, and the spec
the same routes as the URL conf, so neither can drift from the other.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import orjson
import pytest
import yaml
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django.utils.crypto import get_random_string
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_spec_validator import validate as validate_spec
from werkzeug.datastructures import Headers, ImmutableMultiDict

from monitoring.models import Alert, BenchmarkRun
from realtime.tokens import token_issue
from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from tests.monitoring.test_health import IN_MEMORY, dead_redis_url
from tests.servers import Server, free_port
from weddings.models import Supplier
from wedsync.celery import app as celery_app

BASE_DIR = Path(__file__).resolve().parent.parent
SPEC_PATH = BASE_DIR / "docs" / "openapi.yaml"
SPEC_DICT = yaml.safe_load(SPEC_PATH.read_text())
SPEC = OpenAPI.from_dict(SPEC_DICT)
JSON = "application/json"
KEDA_TOKEN = "keda-openapi-0123456789"
SCRAPE_TOKEN = "scrape-openapi-0123456789"
METHODS = ("get", "post", "put", "patch", "delete")

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


# --- requests and responses as openapi-core reads them -----------------------------------


@dataclass
class Sent:
    """A request as it went to the server (openapi-core's Request protocol)."""

    method: str
    url: str
    body: bytes = b""
    content_type: str = JSON
    host_url: str = "http://testserver"

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def parameters(self) -> RequestParameters:
        query = ImmutableMultiDict(parse_qsl(urlsplit(self.url).query))
        return RequestParameters(query=query, header=Headers(), cookie=ImmutableMultiDict())


@dataclass
class Answer:
    """A response as it came back (openapi-core's Response protocol)."""

    status_code: int
    data: bytes
    headers: Headers = field(default_factory=Headers)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


@dataclass
class Exchange:
    sent: Sent
    answer: Answer

    def json(self) -> Any:
        return orjson.loads(self.answer.data)


# --- the data the cases use -----------------------------------------------------------------


@dataclass
class World:
    planner: Any
    vendor: Any
    couple: Any
    stranger: Any
    staff: Any
    runner: Any  # staff with monitoring.run_benchmark
    wedding: Any
    item: Any
    settings: Any = None  # pytest-django's: what a case changes is put back after it

    def bearer(self, user: Any) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {token_issue(user=user)}"}

    def session(self, user: Any, csrf: bool = True) -> tuple[Client, dict[str, str]]:
        """A CSRF-enforcing session client, and the header that passes its check."""
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        if not csrf:
            return client, {}
        secret = get_random_string(32)
        client.cookies[django_settings.CSRF_COOKIE_NAME] = secret
        return client, {django_settings.CSRF_HEADER_NAME: secret}

    @property
    def snapshot(self) -> str:
        return f"/api/weddings/{self.wedding.pk}/"

    @property
    def events(self) -> str:
        return f"/api/weddings/{self.wedding.pk}/events"


@pytest.fixture
def w() -> World:
    planner, vendor, couple = make_user(), make_user(), make_user()
    stranger, staff = make_user(), make_user(is_staff=True)
    runner = make_user(is_staff=True)
    runner.user_permissions.add(
        Permission.objects.get(content_type__app_label="monitoring", codename="run_benchmark")
    )
    wedding = make_wedding(
        couple=(couple,), date=timezone.now().date(), time_zone="UTC", venue_name="Old Barn"
    )
    planner_co = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    vendor_co = make_supplier(users=(vendor,))
    make_booking(supplier=planner_co, wedding=wedding)
    make_booking(supplier=vendor_co, wedding=wedding)
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))
    return World(planner, vendor, couple, stranger, staff, runner, wedding, item)


def call(client: Client, method: str, url: str, body: Any = None, **headers: str) -> Exchange:
    """A request through Django's test client, kept with its response."""
    raw = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    kwargs: dict[str, Any] = {"content_type": JSON} if raw is not None else {}
    if raw is not None:
        kwargs["data"] = raw
    response = getattr(client, method.lower())(url, **kwargs, **headers)
    answer = Answer(response.status_code, response.content, Headers(dict(response.items())))
    return Exchange(Sent(method.lower(), url, raw or b""), answer)


# --- the cases: one per (operation, status) documented -----------------------------------------

CASES: dict[tuple[str, str, int], Callable[[World], Exchange]] = {}


def case(method: str, path: str, status: int) -> Callable:
    def register(produce: Callable[[World], Exchange]) -> Callable[[World], Exchange]:
        CASES[(method, path, status)] = produce
        return produce

    return register


TOKEN, TICKET = "/api/realtime/token", "/api/realtime/ticket"
WEDDINGS, SNAPSHOT = "/api/weddings/", "/api/weddings/{wedding_id}/"
EVENTS, CONNECTIONS = "/api/weddings/{wedding_id}/events", "/api/realtime/connections"
METRICS_API = "/api/performance/realtime/metrics"
BENCHMARK, DESIRED = "/api/performance/realtime/benchmark", "/api/scaling/desired"


@case("POST", TOKEN, 200)
def _(w: World) -> Exchange:
    client, csrf = w.session(w.vendor)
    return call(client, "POST", TOKEN, {"ttl": 600}, **csrf)


@case("POST", TOKEN, 400)
def _(w: World) -> Exchange:
    return call(Client(), "POST", TOKEN, {"ttl": "soon"}, **w.bearer(w.vendor))


@case("POST", TOKEN, 401)
def _(w: World) -> Exchange:
    return call(Client(), "POST", TOKEN, {}, HTTP_AUTHORIZATION="Bearer not-a-token")


@case("POST", TOKEN, 403)
def _(w: World) -> Exchange:
    client, _ = w.session(w.vendor, csrf=False)
    return call(client, "POST", TOKEN, {})


@case("POST", TOKEN, 413)
def _(w: World) -> Exchange:
    return call(Client(), "POST", TOKEN, b" " * 70_000, **w.bearer(w.vendor))


@case("POST", TOKEN, 429)
def _(w: World) -> Exchange:
    w.settings.REALTIME_TOKEN_ISSUE_BURST, w.settings.REALTIME_TOKEN_ISSUE_PER_MINUTE = 1, 0.5
    headers = w.bearer(w.vendor)
    call(Client(), "POST", TOKEN, {}, **headers)
    return call(Client(), "POST", TOKEN, {}, **headers)


@case("POST", TICKET, 200)
def _(w: World) -> Exchange:
    return call(Client(), "POST", TICKET, None, **w.bearer(w.vendor))


@case("POST", TICKET, 401)
def _(w: World) -> Exchange:
    return call(Client(), "POST", TICKET)


@case("POST", TICKET, 403)
def _(w: World) -> Exchange:
    client, _ = w.session(w.vendor, csrf=False)
    return call(client, "POST", TICKET)


@case("POST", TICKET, 429)
def _(w: World) -> Exchange:
    w.settings.REALTIME_TOKEN_ISSUE_BURST, w.settings.REALTIME_TOKEN_ISSUE_PER_MINUTE = 1, 0.5
    headers = w.bearer(w.vendor)
    call(Client(), "POST", TICKET, None, **headers)
    return call(Client(), "POST", TICKET, None, **headers)


@case("POST", TICKET, 503)
def _(w: World) -> Exchange:
    headers = w.bearer(w.vendor)
    w.settings.REDIS_URL = dead_redis_url()  # the ticket store does not answer
    return call(Client(), "POST", TICKET, None, **headers)


@case("GET", CONNECTIONS, 200)
def _(w: World) -> Exchange:
    return call(Client(), "GET", CONNECTIONS, **w.bearer(w.staff))


@case("GET", CONNECTIONS, 401)
def _(w: World) -> Exchange:
    return call(Client(), "GET", CONNECTIONS)


@case("GET", CONNECTIONS, 403)
def _(w: World) -> Exchange:
    return call(Client(), "GET", CONNECTIONS, **w.bearer(w.vendor))


@case("GET", WEDDINGS, 200)
def _(w: World) -> Exchange:
    client, _ = w.session(w.planner, csrf=False)
    return call(client, "GET", WEDDINGS)


@case("GET", WEDDINGS, 401)
def _(w: World) -> Exchange:
    return call(Client(), "GET", WEDDINGS)


@case("GET", SNAPSHOT, 200)
def _(w: World) -> Exchange:
    _publish(w, "vendor.status", {"supplier_id": _supplier_of(w.vendor), "status": "arrived"})
    return call(Client(), "GET", w.snapshot, **w.bearer(w.planner))


@case("GET", SNAPSHOT, 401)
def _(w: World) -> Exchange:
    return call(Client(), "GET", w.snapshot)


@case("GET", SNAPSHOT, 404)
def _(w: World) -> Exchange:
    return call(Client(), "GET", w.snapshot, **w.bearer(w.stranger))


@case("GET", EVENTS, 200)
def _(w: World) -> Exchange:
    for text in ("doors open", "first dance"):
        _publish(w, "message.posted", {"text": text})
    return call(Client(), "GET", f"{w.events}?since=0&limit=1", **w.bearer(w.vendor))


@case("GET", EVENTS, 400)
def _(w: World) -> Exchange:
    return call(Client(), "GET", f"{w.events}?limit=5000", **w.bearer(w.vendor))


@case("GET", EVENTS, 401)
def _(w: World) -> Exchange:
    return call(Client(), "GET", w.events)


@case("GET", EVENTS, 404)
def _(w: World) -> Exchange:
    return call(Client(), "GET", w.events, **w.bearer(w.stranger))


@case("GET", EVENTS, 429)
def _(w: World) -> Exchange:
    w.settings.REALTIME_USER_REPLAY_BURST, w.settings.REALTIME_USER_REPLAY_RATE = 1, 0.001
    _publish(w, "message.posted", {"text": "one"})
    _publish(w, "message.posted", {"text": "two"})
    headers = w.bearer(w.vendor)
    call(Client(), "GET", f"{w.events}?since=0", **headers)
    return call(Client(), "GET", f"{w.events}?since=0", **headers)


@case("POST", EVENTS, 201)
def _(w: World) -> Exchange:
    body = {"event": "message.posted", "payload": {"text": "hi"}, "idempotency_key": "k-1"}
    return call(Client(), "POST", w.events, body, **w.bearer(w.vendor))


@case("POST", EVENTS, 200)
def _(w: World) -> Exchange:
    body = {"event": "message.posted", "payload": {"text": "hi"}, "idempotency_key": "k-1"}
    headers = w.bearer(w.vendor)
    call(Client(), "POST", w.events, body, **headers)
    return call(Client(), "POST", w.events, body, **headers)


@case("POST", EVENTS, 400)
def _(w: World) -> Exchange:
    body = {"event": "message.posted", "payload": {"text": ""}}
    return call(Client(), "POST", w.events, body, **w.bearer(w.vendor))


@case("POST", EVENTS, 401)
def _(w: World) -> Exchange:
    return call(Client(), "POST", w.events, {"event": "message.posted", "payload": {}})


@case("POST", EVENTS, 403)
def _(w: World) -> Exchange:
    body = {"event": "message.posted", "payload": {"text": "from the couple"}}
    return call(Client(), "POST", w.events, body, **w.bearer(w.couple))


@case("POST", EVENTS, 404)
def _(w: World) -> Exchange:
    body = {"event": "message.posted", "payload": {"text": "hi"}}
    return call(Client(), "POST", w.events, body, **w.bearer(w.stranger))


@case("POST", EVENTS, 409)
def _(w: World) -> Exchange:
    payload = {"id": w.item.pk, "version": w.item.version + 5, "title": "Later"}
    body = {"event": "timeline.item.updated", "payload": payload}
    return call(Client(), "POST", w.events, body, **w.bearer(w.planner))


@case("POST", EVENTS, 413)
def _(w: World) -> Exchange:
    body = {"event": "message.posted", "payload": {"text": "x" * 70_000}}
    return call(Client(), "POST", w.events, body, **w.bearer(w.vendor))


@case("POST", EVENTS, 429)
def _(w: World) -> Exchange:
    w.settings.REALTIME_USER_PUBLISH_BURST, w.settings.REALTIME_USER_PUBLISH_RATE = 1, 0.001
    body = {"event": "message.posted", "payload": {"text": "hi"}}
    headers = w.bearer(w.vendor)
    call(Client(), "POST", w.events, body, **headers)
    return call(Client(), "POST", w.events, body, **headers)


@case("GET", METRICS_API, 200)
def _(w: World) -> Exchange:
    Alert.objects.create(rule="publish_errors", severity="warning", message="publishes failing")
    return call(Client(), "GET", f"{METRICS_API}?minutes=15", **w.bearer(w.staff))


@case("GET", METRICS_API, 400)
def _(w: World) -> Exchange:
    return call(Client(), "GET", f"{METRICS_API}?minutes=7", **w.bearer(w.staff))


@case("GET", METRICS_API, 401)
def _(w: World) -> Exchange:
    return call(Client(), "GET", METRICS_API)


@case("GET", METRICS_API, 403)
def _(w: World) -> Exchange:
    return call(Client(), "GET", METRICS_API, **w.bearer(w.vendor))


@case("POST", METRICS_API, 200)
def _(w: World) -> Exchange:
    body = {"action": "wedding_day_mode", "enabled": True, "reason": "Saturday"}
    return call(Client(), "POST", METRICS_API, body, **w.bearer(w.staff))


@case("POST", METRICS_API, 202)
def _(w: World) -> Exchange:
    # Eager: the task runs here, leaving nothing in a queue no worker reads.
    celery_app.conf.task_always_eager = True
    try:
        return call(Client(), "POST", METRICS_API, {"action": "warm_cache"}, **w.bearer(w.staff))
    finally:
        celery_app.conf.task_always_eager = False


@case("POST", METRICS_API, 400)
def _(w: World) -> Exchange:
    return call(Client(), "POST", METRICS_API, {"action": "reboot"}, **w.bearer(w.staff))


@case("POST", METRICS_API, 401)
def _(w: World) -> Exchange:
    return call(Client(), "POST", METRICS_API, {"action": "warm_cache"})


@case("POST", METRICS_API, 403)
def _(w: World) -> Exchange:
    return call(Client(), "POST", METRICS_API, {"action": "warm_cache"}, **w.bearer(w.vendor))


@case("POST", METRICS_API, 404)
def _(w: World) -> Exchange:
    body = {"action": "acknowledge_alert", "alert_id": 987_654}
    return call(Client(), "POST", METRICS_API, body, **w.bearer(w.staff))


@case("GET", BENCHMARK, 200)
def _(w: World) -> Exchange:
    BenchmarkRun.objects.create(scenario="saturday-peak", params={}, status="failed")
    return call(Client(), "GET", BENCHMARK, **w.bearer(w.staff))


@case("GET", BENCHMARK, 401)
def _(w: World) -> Exchange:
    return call(Client(), "GET", BENCHMARK)


@case("GET", BENCHMARK, 403)
def _(w: World) -> Exchange:
    return call(Client(), "GET", BENCHMARK, **w.bearer(w.vendor))


TINY_RUN = {
    "scenario": "saturday-peak",
    "params": {"connections": 2, "per-wedding": 2, "rate": 1, "duration": 1},
}


def _benchmark_on_a_server(w: World, host: str | None = None) -> Exchange:
    """POST a tiny run to a real server process: the run is a child process driving it."""
    server = Server("uvicorn")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=170)
        headers = {"Authorization": f"Bearer {token_issue(user=w.runner)}", "Content-Type": JSON}
        if host:
            headers["Host"] = host
        body = orjson.dumps(TINY_RUN)
        conn.request("POST", BENCHMARK, body=body, headers=headers)
        response = conn.getresponse()
        answer = Answer(response.status, response.read(), Headers(response.getheaders()))
        conn.close()
    finally:
        server.stop()
    return Exchange(Sent("post", BENCHMARK, body), answer)


@case("POST", BENCHMARK, 200)
def _(w: World) -> Exchange:
    return _benchmark_on_a_server(w)


@case("POST", BENCHMARK, 502)
def _(w: World) -> Exchange:
    # The run's load generator connects to the Host the request named: a port where
    # nothing listens, so the run fails.
    return _benchmark_on_a_server(w, host=f"localhost:{free_port()}")


@case("POST", BENCHMARK, 400)
def _(w: World) -> Exchange:
    body = {"scenario": "saturday-peak", "params": {"duration": 600}}
    return call(Client(), "POST", BENCHMARK, body, **w.bearer(w.runner))


@case("POST", BENCHMARK, 401)
def _(w: World) -> Exchange:
    return call(Client(), "POST", BENCHMARK, TINY_RUN)


@case("POST", BENCHMARK, 403)
def _(w: World) -> Exchange:
    return call(Client(), "POST", BENCHMARK, TINY_RUN, **w.bearer(w.staff))


@case("POST", BENCHMARK, 409)
def _(w: World) -> Exchange:
    BenchmarkRun.objects.create(scenario="saturday-peak", params={})  # running
    return call(Client(), "POST", BENCHMARK, TINY_RUN, **w.bearer(w.runner))


@case("POST", BENCHMARK, 423)
def _(w: World) -> Exchange:
    from scaling.services import wedding_day_mode_set

    wedding_day_mode_set(enabled=True, reason="Saturday: 40 weddings", user=None)
    return call(Client(), "POST", BENCHMARK, TINY_RUN, **w.bearer(w.runner))


@case("GET", DESIRED, 200)
def _(w: World) -> Exchange:
    w.settings.SCALING_API_TOKEN = KEDA_TOKEN
    return call(Client(), "GET", DESIRED, HTTP_AUTHORIZATION=f"Bearer {KEDA_TOKEN}")


@case("GET", DESIRED, 401)
def _(w: World) -> Exchange:
    w.settings.SCALING_API_TOKEN = KEDA_TOKEN
    return call(Client(), "GET", DESIRED, HTTP_AUTHORIZATION="Bearer wrong")


@case("GET", DESIRED, 403)
def _(w: World) -> Exchange:
    return call(Client(), "GET", DESIRED, **w.bearer(w.vendor))


@case("GET", "/healthz", 200)
def _(w: World) -> Exchange:
    return call(Client(), "GET", "/healthz")


@case("GET", "/readyz", 200)
def _(w: World) -> Exchange:
    w.settings.REDIS_URL, w.settings.CHANNEL_LAYERS = "", IN_MEMORY
    w.settings.METRICS_ALLOWED_NETWORKS = ["127.0.0.1/32"]  # the checks too
    return call(Client(), "GET", "/readyz")


@case("GET", "/readyz", 503)
def _(w: World) -> Exchange:
    from realtime.node import process as registry

    w.settings.REDIS_URL, w.settings.CHANNEL_LAYERS = "", IN_MEMORY
    w.settings.METRICS_ALLOWED_NETWORKS = []  # the public answer: the status alone
    registry.draining = True  # after SIGTERM: this process cannot serve
    try:
        return call(Client(), "GET", "/readyz")
    finally:
        registry.draining = False


@case("GET", "/metrics", 200)
def _(w: World) -> Exchange:
    w.settings.METRICS_ALLOWED_NETWORKS, w.settings.METRICS_TOKEN = [], SCRAPE_TOKEN
    return call(Client(), "GET", "/metrics", HTTP_AUTHORIZATION=f"Bearer {SCRAPE_TOKEN}")


@case("GET", "/metrics", 401)
def _(w: World) -> Exchange:
    w.settings.METRICS_ALLOWED_NETWORKS, w.settings.METRICS_TOKEN = [], SCRAPE_TOKEN
    return call(Client(), "GET", "/metrics")


@case("GET", "/metrics", 403)
def _(w: World) -> Exchange:
    w.settings.METRICS_ALLOWED_NETWORKS, w.settings.METRICS_TOKEN = [], SCRAPE_TOKEN
    return call(Client(), "GET", "/metrics", **w.bearer(w.vendor))


# --- Web Push (docs/web.md, "Push") ---------------------------------------------------------

PUSH_KEY, PUSH_SUBSCRIPTIONS, PUSH_ACK = "/api/push/key", "/api/push/subscriptions", "/api/push/ack"


def _push_on(w: World) -> dict[str, Any]:
    """Push configured; a subscription body of a browser (keys made as it makes them)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from push.conf import b64url, generate_keys

    private, public = generate_keys()
    w.settings.WEB_PUSH_VAPID_PRIVATE_KEY, w.settings.WEB_PUSH_VAPID_PUBLIC_KEY = private, public
    w.settings.WEB_PUSH_SUBJECT = "mailto:ops@wedsync.test"
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    keys = {"p256dh": b64url(point), "auth": b64url(b"0123456789abcdef")}
    return {"endpoint": "https://push.example.com/send/abc", "keys": keys}


@case("GET", PUSH_KEY, 200)
def _(w: World) -> Exchange:
    _push_on(w)
    return call(Client(), "GET", PUSH_KEY, **w.bearer(w.vendor))


@case("GET", PUSH_KEY, 401)
def _(w: World) -> Exchange:
    return call(Client(), "GET", PUSH_KEY)


@case("POST", PUSH_SUBSCRIPTIONS, 201)
def _(w: World) -> Exchange:
    client, csrf = w.session(w.vendor)
    return call(client, "POST", PUSH_SUBSCRIPTIONS, _push_on(w), **csrf)


@case("POST", PUSH_SUBSCRIPTIONS, 200)
def _(w: World) -> Exchange:
    client, csrf = w.session(w.vendor)
    body = _push_on(w)
    call(client, "POST", PUSH_SUBSCRIPTIONS, body, **csrf)
    return call(client, "POST", PUSH_SUBSCRIPTIONS, body, **csrf)


@case("POST", PUSH_SUBSCRIPTIONS, 400)
def _(w: World) -> Exchange:
    body = {**_push_on(w), "endpoint": "http://push.example.com/send/abc"}
    return call(Client(), "POST", PUSH_SUBSCRIPTIONS, body, **w.bearer(w.vendor))


@case("POST", PUSH_SUBSCRIPTIONS, 401)
def _(w: World) -> Exchange:
    return call(Client(), "POST", PUSH_SUBSCRIPTIONS, _push_on(w))


@case("POST", PUSH_SUBSCRIPTIONS, 403)
def _(w: World) -> Exchange:
    client, _ = w.session(w.vendor, csrf=False)
    return call(client, "POST", PUSH_SUBSCRIPTIONS, _push_on(w))


@case("POST", PUSH_SUBSCRIPTIONS, 409)
def _(w: World) -> Exchange:
    body = _push_on(w)
    w.settings.WEB_PUSH_SUBJECT = ""  # push off
    return call(Client(), "POST", PUSH_SUBSCRIPTIONS, body, **w.bearer(w.vendor))


@case("DELETE", PUSH_SUBSCRIPTIONS, 200)
def _(w: World) -> Exchange:
    body = {"endpoint": _push_on(w)["endpoint"]}
    return call(Client(), "DELETE", PUSH_SUBSCRIPTIONS, body, **w.bearer(w.vendor))


@case("POST", PUSH_ACK, 200)
def _(w: World) -> Exchange:
    from push.services import ack_token
    from realtime.models import Event

    _publish(w, "emergency.raised", {"kind": "fire", "text": "drill"})
    seq = Event.objects.get(topic=w.wedding.topic, event="emergency.raised").seq
    token = ack_token(w.vendor.pk, w.wedding.topic, seq)
    return call(Client(), "POST", PUSH_ACK, {"token": token})


@case("POST", PUSH_ACK, 401)
def _(w: World) -> Exchange:
    return call(Client(), "POST", PUSH_ACK, {"token": "forged"})


# --- helpers of the cases ----------------------------------------------------------------------


def _supplier_of(user: Any) -> int:
    return user.supplier_memberships.get().supplier_id


def _publish(w: World, event: str, payload: dict[str, Any]) -> None:
    from realtime.services import event_publish

    user = w.vendor if event == "vendor.status" or event == "message.posted" else w.planner
    event_publish(topic=w.wedding.topic, event=event, payload=payload, user=user)


# --- the tests -----------------------------------------------------------------------------


def _documented() -> set[tuple[str, str, int]]:
    return {
        (method.upper(), path, int(status))
        for path, item in SPEC_DICT["paths"].items()
        for method, operation in item.items()
        if method in METHODS
        for status in operation["responses"]
        if status != "default"
    }


def test_spec__is_valid_openapi_3_1() -> None:
    assert SPEC_DICT["openapi"].startswith("3.1.")
    validate_spec(SPEC_DICT)


def test_spec__documents_exactly_the_statuses_the_cases_produce() -> None:
    documented, produced = _documented(), set(CASES)

    assert sorted(documented - produced) == [], "documented, never produced here"
    assert sorted(produced - documented) == [], "produced here, not documented"


def _routes(patterns: list, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            found |= _routes(entry.url_patterns, route)
        elif isinstance(entry, URLPattern):
            found.add("/" + route.replace("<int:wedding_id>", "{wedding_id}"))
    return found


def test_spec__documents_every_api_route_of_the_url_conf() -> None:
    routes = {
        r
        for r in _routes(get_resolver().url_patterns)
        if r.startswith("/api/") or r in {"/healthz", "/readyz", "/metrics"}
    }

    assert routes == set(SPEC_DICT["paths"])


@pytest.mark.parametrize(
    ("method", "path", "status"), sorted(CASES), ids=[f"{m} {p} {s}" for m, p, s in sorted(CASES)]
)
def test_response__matches_the_spec(w: World, settings: Any, method: str, path: str, status: int):
    # given the situation of the case, when its request is made
    w.settings = settings
    exchange = CASES[(method, path, status)](w)

    # then it answers the documented status, and the response is as the spec says
    assert exchange.answer.status_code == status, exchange.answer.data[:2000]
    SPEC.validate_response(exchange.sent, exchange.answer)
    if exchange.answer.content_type.startswith(JSON):
        body = exchange.json()
        assert "Traceback" not in json.dumps(body)


# A method an operation does not list (PROTOCOL §9, the spec's description).
UNLISTED = [
    ("get", TOKEN), ("get", TICKET), ("post", CONNECTIONS), ("post", WEDDINGS),
    ("post", "/api/weddings/1/"), ("put", "/api/weddings/1/events"), ("put", METRICS_API),
    ("put", BENCHMARK), ("post", DESIRED), ("post", PUSH_KEY), ("get", PUSH_SUBSCRIPTIONS),
    ("get", PUSH_ACK),
]  # fmt: skip


@pytest.mark.parametrize(("method", "url"), UNLISTED, ids=[f"{m} {u}" for m, u in UNLISTED])
def test_unlisted_method__405_json_error_of_the_spec(w: World, method: str, url: str) -> None:
    template = url.replace("/1/", "/{wedding_id}/")
    assert method not in SPEC_DICT["paths"][template]

    body = None if method == "get" else {}
    exchange = call(Client(), method, url, body, **w.bearer(w.staff))

    assert exchange.answer.status_code == 405
    # the spec's Error schema, its "#/components/..." references resolvable
    error = {**SPEC_DICT["components"]["schemas"]["Error"], "components": SPEC_DICT["components"]}
    jsonschema.validate(exchange.json(), error)
    assert exchange.json()["error"]["code"] == "method_not_allowed"
