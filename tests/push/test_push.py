"""Web Push end to end against a local push service: an HTTPS server in the test process
(its own certificate, trusted through SSL_CERT_FILE) that verifies each push's VAPID JWT
(ES256, RFC 8292) against the configured public key and decrypts its body (RFC 8291,
aes128gcm) with the keys a browser would have made, then answers as a push service does
(201, or what a test asks for: 410, 5xx). Events are stored through the real publish
service; the fan-out and the sends run as Celery runs them (eager, retries included)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import http_ece
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from django.test import Client

from push import conf, tasks
from push.conf import b64url, b64url_decode, check_keys, generate_keys
from push.models import Subscription
from push.services import subscription_register
from realtime.models import Ack, Event
from realtime.services import event_publish, event_publish_system
from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from weddings.models import Supplier, Wedding
from wedsync.celery import app as celery_app

pytestmark = [pytest.mark.django_db, pytest.mark.postgres, pytest.mark.timeout(20)]

SUBJECT = "mailto:ops@wedsync.test"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "push.pem", directory / "push.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Browser:
    """What a browser makes when it subscribes: a P-256 key pair and a 16-byte secret."""

    def __init__(self, service: PushService, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        self.endpoint = f"{service.origin}/push/{name}"
        self.name = name

    @property
    def p256dh(self) -> str:
        point = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(point)


class PushService:
    """A push service: verifies VAPID, decrypts for the registered browser, answers with
    the next status planned for that browser (201 when none); ``received[name]`` holds
    the decrypted messages, ``attempts[name]`` the statuses answered."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = _self_signed(directory)
        self.browsers: dict[str, Browser] = {}
        self.plans: dict[str, list[int]] = defaultdict(list)
        self.received: dict[str, list[dict]] = defaultdict(list)
        self.attempts: dict[str, list[int]] = defaultdict(list)
        self.refused: list[str] = []
        self.public_key = ""
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                name = self.path.rsplit("/", 1)[-1]
                status = service.handle(name, self.headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.origin = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def browser(self, name: str) -> Browser:
        self.browsers[name] = Browser(self, name)
        return self.browsers[name]

    def _vapid_ok(self, headers: Any) -> bool:
        """RFC 8292: ``vapid t=<ES256 JWT>, k=<the application server's key>``."""
        scheme, _, params = headers.get("Authorization", "").partition(" ")
        fields = dict(p.strip().split("=", 1) for p in params.split(",") if "=" in p)
        if scheme != "vapid" or fields.get("k") != self.public_key:
            return False
        point = b64url_decode(fields["k"])
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        try:
            claims = jwt.decode(fields["t"], key, algorithms=["ES256"], audience=self.origin)
        except jwt.PyJWTError:
            return False
        return claims["sub"] == SUBJECT and time.time() < claims["exp"] <= time.time() + 86400

    def handle(self, name: str, headers: Any, body: bytes) -> int:
        browser = self.browsers.get(name)
        if browser is None or not self._vapid_ok(headers):
            self.refused.append(name)
            return 401
        assert headers["Content-Encoding"] == "aes128gcm" and int(headers["TTL"]) > 0
        plain = http_ece.decrypt(
            body, private_key=browser.key, auth_secret=browser.auth, version="aes128gcm"
        )
        status = self.plans[name].pop(0) if self.plans[name] else 201
        self.attempts[name].append(status)
        if status == 201:
            self.received[name].append(json.loads(plain))
        return status


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = PushService(tmp_path_factory.mktemp("push"))
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def push_on(service: PushService, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Push configured with a fresh key pair; the local service trusted; Celery eager."""
    private, public = generate_keys()
    settings.WEB_PUSH_VAPID_PRIVATE_KEY = private
    settings.WEB_PUSH_VAPID_PUBLIC_KEY = public
    settings.WEB_PUSH_SUBJECT = SUBJECT
    settings.WEB_PUSH_ALLOW_PRIVATE = True
    settings.WEB_PUSH_TIMEOUT = 3.0
    settings.WEB_PUSH_MAX_ATTEMPTS = 4
    service.public_key = public
    for records in (service.browsers, service.plans, service.received, service.attempts):
        records.clear()
    service.refused.clear()
    monkeypatch.setenv("SSL_CERT_FILE", str(service.cert))
    celery_app.conf.task_always_eager = True
    yield service
    celery_app.conf.task_always_eager = False


@pytest.fixture
def day(push_on: PushService) -> dict[str, Any]:
    """A wedding next month: a planner, two vendors, the couple; each with a browser."""
    people = {name: make_user(username=name) for name in ("planner", "photo", "band", "couple")}
    wedding = make_wedding(
        couple=(people["couple"],),
        date=dt.date.today() + dt.timedelta(days=30),
        status=Wedding.Status.CONFIRMED,
    )
    suppliers = {
        "planner": make_supplier(category=Supplier.Category.PLANNER, users=(people["planner"],)),
        "photo": make_supplier(users=(people["photo"],)),
        "band": make_supplier(category=Supplier.Category.MUSIC, users=(people["band"],)),
    }
    for supplier in suppliers.values():
        make_booking(supplier=supplier, wedding=wedding)
    for name, user in people.items():
        browser = push_on.browser(name)
        subscription_register(
            user=user, endpoint=browser.endpoint, p256dh=browser.p256dh, auth=b64url(browser.auth)
        )
    return {"wedding": wedding, "people": people, "suppliers": suppliers, "service": push_on}


def _publish(django_capture_on_commit_callbacks: Any, user: Any, wedding: Wedding, event: str,
             payload: dict) -> Any:  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        return event_publish(topic=f"wedding:{wedding.pk}", event=event, payload=payload, user=user)


def _emergency(day: dict, capture: Any, raiser: str = "planner") -> Any:
    return _publish(capture, day["people"][raiser], day["wedding"], "emergency.raised",
                    {"kind": "medical", "text": "Guest collapsed by the bar"})  # fmt: skip


def test_emergency__encrypted_signed_and_pushed_to_members_not_the_couple_nor_the_raiser(
    day, django_capture_on_commit_callbacks
):
    # when
    result = _emergency(day, django_capture_on_commit_callbacks)

    # then: the vendors got it, decrypted with their own keys; VAPID held every time
    service, wedding = day["service"], day["wedding"]
    assert service.refused == []
    assert sorted(service.received) == ["band", "photo"]
    message = service.received["photo"][0]
    assert message["title"] == "Alex & Sam · Emergency: medical"
    assert message["body"] == "Guest collapsed by the bar"
    assert message["url"] == f"/weddings/{wedding.pk}/"
    assert (message["topic"], message["seq"], message["critical"]) == (
        f"wedding:{wedding.pk}",
        result.event.seq,
        True,
    )
    assert message["ack"] and message["ack"] != service.received["band"][0]["ack"]
    assert Subscription.objects.filter(last_success_at__isnull=False).count() == 2


def test_ack__a_notifications_token_acknowledges_as_its_user(
    day, django_capture_on_commit_callbacks
):
    result = _emergency(day, django_capture_on_commit_callbacks)
    token = day["service"].received["photo"][0]["ack"]
    client = Client(enforce_csrf_checks=True)  # no session, no CSRF: the token is the key

    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/push/ack", {"token": token}, content_type="application/json")
    forged = client.post("/api/push/ack", {"token": token[:-2] + "xx"},
                         content_type="application/json")  # fmt: skip

    # then
    assert response.status_code == 200, response.content
    assert Ack.objects.filter(event=result.event, user=day["people"]["photo"]).exists()
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "unauthenticated"


def test_gone__a_410_deletes_the_subscription(day, django_capture_on_commit_callbacks):
    day["service"].plans["photo"] = [410]

    _emergency(day, django_capture_on_commit_callbacks)

    assert day["service"].attempts["photo"] == [410]
    assert not Subscription.objects.filter(user=day["people"]["photo"]).exists()
    assert Subscription.objects.filter(user=day["people"]["band"]).exists()


def test_5xx__retried_until_the_push_service_takes_it(day, django_capture_on_commit_callbacks):
    day["service"].plans["photo"] = [503, 500]
    day["service"].plans["band"] = [500, 500, 500, 500, 500]

    _emergency(day, django_capture_on_commit_callbacks)

    # then: photo got it at the third attempt; band's four attempts were all refused
    assert day["service"].attempts["photo"] == [503, 500, 201]
    assert len(day["service"].received["photo"]) == 1
    assert day["service"].attempts["band"] == [500] * 4 and not day["service"].received["band"]
    assert Subscription.objects.filter(user=day["people"]["band"]).exists()  # kept: transient
    assert [tasks.backoff(n) for n in range(4)] == [5.0, 10.0, 20.0, 40.0]


def test_timeline_shift__pushed_only_to_the_vendors_whose_items_moved(
    day, django_capture_on_commit_callbacks
):
    wedding = day["wedding"]
    first = make_item(wedding=wedding, title="First dance", start=(19, 0))
    first.suppliers.add(day["suppliers"]["band"])

    _publish(django_capture_on_commit_callbacks, day["people"]["planner"], wedding,
             "timeline.shifted", {"from_item_id": first.pk, "minutes": 15})  # fmt: skip

    service = day["service"]
    assert sorted(service.received) == ["band"]
    message = service.received["band"][0]
    assert message["title"] == "Alex & Sam · Timeline moved +15 min"
    assert message["body"] == "First dance" and message["critical"] is False


def test_quiet__on_a_live_wedding_only_critical_pushes(day, django_capture_on_commit_callbacks):
    # given: the band plays another wedding that is live now
    other = make_wedding(date=dt.date.today(), status=Wedding.Status.IN_PROGRESS)
    make_booking(supplier=day["suppliers"]["band"], wedding=other)
    first = make_item(wedding=day["wedding"], title="First dance", start=(19, 0))
    first.suppliers.add(day["suppliers"]["band"], day["suppliers"]["photo"])

    # when: a shift (normal), then an emergency (critical)
    _publish(django_capture_on_commit_callbacks, day["people"]["planner"], day["wedding"],
             "timeline.shifted", {"from_item_id": first.pk, "minutes": -10})  # fmt: skip
    _emergency(day, django_capture_on_commit_callbacks)

    # then
    received = day["service"].received
    assert [m["event"] for m in received["photo"]] == ["timeline.shifted", "emergency.raised"]
    assert [m["event"] for m in received["band"]] == ["emergency.raised"]


def test_subscriptions_view__csrf_bounds_and_delete(day):
    browser = day["service"].browser("web")
    client = Client(enforce_csrf_checks=True)
    client.force_login(day["people"]["photo"])
    client.get(f"/weddings/{day['wedding'].pk}/")  # the page sets the CSRF cookie
    csrf = {"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value}
    body = {"endpoint": browser.endpoint, "keys": {"p256dh": browser.p256dh,
            "auth": b64url(browser.auth)}}  # fmt: skip

    def post(data: dict, **extra: Any) -> Any:
        return client.post("/api/push/subscriptions", data, content_type="application/json",
                           HTTP_USER_AGENT="Chromium-Test", **extra)  # fmt: skip

    # when / then: without the CSRF token refused; with it stored
    assert post(body).status_code == 403
    created = post(body, **csrf)
    assert created.status_code == 201, created.content
    stored = Subscription.objects.get(endpoint=browser.endpoint)
    assert (stored.user, stored.user_agent) == (day["people"]["photo"], "Chromium-Test")
    assert post(body, **csrf).status_code == 200  # again: the same row
    for field, value in [
        ("endpoint", {**body, "endpoint": browser.endpoint.replace("https", "http")}),
        ("endpoint", {**body, "endpoint": "https://x.test/" + "a" * 1000}),
        ("keys.p256dh", {**body, "keys": {**body["keys"], "p256dh": b64url(b"\x04" * 65)}}),
        ("keys.p256dh", {**body, "keys": {**body["keys"], "p256dh": "a" * 200}}),
        ("keys.auth", {**body, "keys": {**body["keys"], "auth": b64url(b"x" * 15)}}),
        ("keys", {"endpoint": browser.endpoint}),
    ]:
        response = post(value, **csrf)
        assert response.status_code == 400, (field, response.content)
        assert response.json()["error"]["field"] == field
    removed = client.delete("/api/push/subscriptions", {"endpoint": browser.endpoint},
                            content_type="application/json", **csrf)  # fmt: skip
    assert removed.json() == {"removed": True}
    assert not Subscription.objects.filter(endpoint=browser.endpoint).exists()


def test_key_view__the_public_key_when_on_and_nothing_taken_when_off(day, settings):
    client = Client()
    client.force_login(day["people"]["photo"])
    on = client.get("/api/push/key").json()
    assert on == {"enabled": True, "public_key": settings.WEB_PUSH_VAPID_PUBLIC_KEY}

    settings.WEB_PUSH_SUBJECT = ""
    off = client.get("/api/push/key").json()
    refused = client.post("/api/push/subscriptions", {"endpoint": "https://x.test/a"},
                          content_type="application/json")  # fmt: skip
    assert off == {"enabled": False, "public_key": None}
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "push_disabled"
    assert Client().get("/api/push/key").status_code == 401


def test_vapid_keys__command_prints_a_pair_the_check_accepts(settings, capsys):
    call_command("push_vapid_keys")
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.split())
    settings.WEB_PUSH_VAPID_PRIVATE_KEY = lines["WEB_PUSH_VAPID_PRIVATE_KEY"]
    settings.WEB_PUSH_VAPID_PUBLIC_KEY = lines["WEB_PUSH_VAPID_PUBLIC_KEY"]
    settings.WEB_PUSH_SUBJECT = SUBJECT
    assert check_keys() == [] and conf.enabled()

    settings.WEB_PUSH_VAPID_PUBLIC_KEY = generate_keys()[1]
    assert [m.id for m in check_keys()] == ["push.E001"]
    settings.WEB_PUSH_SUBJECT = ""
    assert [m.id for m in check_keys()] == ["push.W001"] and not conf.enabled()


def test_admin__staff_see_the_subscriptions_without_their_keys(day):
    staff = make_user(username="ops", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)

    listing = client.get("/admin/push/subscription/")
    one = Subscription.objects.get(user=day["people"]["photo"])
    detail = client.get(f"/admin/push/subscription/{one.pk}/change/")

    assert listing.status_code == 200 and b"photo" in listing.content
    assert detail.status_code == 200 and one.endpoint.encode() in detail.content
    assert one.p256dh.encode() not in detail.content and one.auth.encode() not in detail.content


def test_overdue_nudge__to_the_suppliers_who_have_not_acked_and_acks_the_waiting_event(
    day, django_capture_on_commit_callbacks
):
    # given: an emergency the photographer has not acknowledged
    raised = _emergency(day, django_capture_on_commit_callbacks)
    service = day["service"]
    service.received.clear()
    nudge = {
        "alert_id": 1, "seq": raised.event.seq, "event": "emergency.raised", "minutes": 16,
        "missing": [{"id": day["suppliers"]["photo"].pk, "name": "Photo"}],
        "planner_supplier_ids": [day["suppliers"]["planner"].pk], "severity": "critical",
        "count": 1, "seqs": [raised.event.seq],
    }  # fmt: skip

    # when: monitoring publishes the overdue-ack alert (as monitoring.services does)
    with django_capture_on_commit_callbacks(execute=True):
        event_publish_system(f"wedding:{day['wedding'].pk}", "alert.ack_overdue", nudge,
                             Event.Priority.CRITICAL)  # fmt: skip

    # then: the late photographer and the planner are nudged; the band (it acked nothing
    # but is not named) and the couple are not
    assert sorted(service.received) == ["photo", "planner"]
    message = service.received["photo"][0]
    assert message["title"] == "Alex & Sam · Acknowledgement overdue"
    response = Client().post("/api/push/ack", {"token": message["ack"]},
                             content_type="application/json")  # fmt: skip
    assert response.json()["seq"] == raised.event.seq  # the waiting emergency, acked
    assert Ack.objects.filter(event=raised.event, user=day["people"]["photo"]).exists()


def test_ssrf__a_push_service_on_a_private_address_is_refused_when_not_allowed(
    day, settings, django_capture_on_commit_callbacks
):
    settings.WEB_PUSH_ALLOW_PRIVATE = False

    _emergency(day, django_capture_on_commit_callbacks)

    assert day["service"].attempts == {} and day["service"].received == {}
    assert Subscription.objects.filter(last_success_at__isnull=False).count() == 0
    assert Subscription.objects.count() == 4  # refused, not deleted
