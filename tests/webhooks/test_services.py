"""Outbound webhooks against a real local receiver (http.server on 127.0.0.1) that
verifies every Standard Webhooks signature on its own, records the order, and fails the
first N attempts. Events are stored through the real publish service; delivery runs as
the Celery task runs it (its function called here), time passed in as ``now``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client

from realtime.services import event_publish_system
from webhooks import selectors, signing, tasks
from webhooks.models import Delivery, Endpoint, EndpointCursor
from webhooks.services import endpoint_deliver, endpoint_register

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(20)]

T0 = dt.datetime(2026, 6, 13, 12, 0, tzinfo=dt.UTC)


def _verify(secret: str, headers: Any, body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec (not the product's code)."""
    msg_id, stamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
    if not msg_id or not stamp or abs(time.time() - int(stamp)) > 300:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(sig.partition(",")[2], expected)
        for sig in headers.get("webhook-signature", "").split()
        if sig.startswith("v1,")
    )


class Receiver:
    """A webhook receiver: 401 for a bad signature, 500 for the first ``fail_first``
    attempts, then 204; ``accepted`` holds (topic, seq, webhook-id) in arrival order."""

    def __init__(self) -> None:
        self.secret = ""
        self.fail_first = 0
        self.attempts: list[tuple[str, int, str]] = []
        self.accepted: list[tuple[str, int, str]] = []
        self.rejected = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not _verify(receiver.secret, self.headers, body):
                    receiver.rejected += 1
                    self.send_response(401)
                else:
                    message = json.loads(body)
                    assert message["data"]["type"] == "event"
                    assert message["data"]["seq"] == message["seq"]
                    entry = (message["topic"], message["seq"], self.headers["webhook-id"])
                    receiver.attempts.append(entry)
                    if len(receiver.attempts) <= receiver.fail_first:
                        self.send_response(500)
                    else:
                        receiver.accepted.append(entry)
                        self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/wedsync"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def seqs(self, topic: str) -> list[int]:
        return [seq for t, seq, _ in self.accepted if t == topic]


@pytest.fixture
def receiver(settings: Any) -> Any:
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    settings.WEBHOOKS_TIMEOUT = 2.0
    settings.WEBHOOKS_BACKOFF_BASE = 1.0
    settings.WEBHOOKS_BACKOFF_MAX = 3.0
    settings.WEBHOOKS_MAX_ATTEMPTS = 4
    selectors.endpoints_active_forget()  # a list another test's endpoints left
    server = Receiver()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def scheduled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, Any]]:
    """The runs the task queues (instead of a broker)."""
    calls: list[tuple[int, Any]] = []
    monkeypatch.setattr(
        tasks, "schedule", lambda endpoint_id, at=None: calls.append((endpoint_id, at))
    )
    return calls


def _endpoint(receiver: Receiver, **filters: str) -> Endpoint:
    endpoint = endpoint_register(name="planner CRM", url=receiver.url, **filters)
    receiver.secret = endpoint.secret
    return endpoint


def _publish(topic: str, event: str = "note.added", **payload: Any) -> int:
    return event_publish_system(topic, event, payload).seq


def test_deliver__every_matching_event_once_in_seq_order_per_topic(receiver, scheduled):
    # given: an event before the endpoint existed, then events on matching and other topics
    _publish("wedding:1", n=0)
    endpoint = _endpoint(receiver, topics="wedding:", event_types="note.added, emergency.*")
    for n in range(1, 4):
        _publish("wedding:1", n=n)
        _publish("wedding:2", n=n)
        _publish("wedding:1", "status.changed")  # another type: never sent
    _publish("wedding:2", "emergency.raised", id="e1")
    _publish("supplier:7", n=1)  # another topic: never sent
    _publish("ops", n=1)

    # when: the task runs as a worker would
    outcome = tasks.deliver_endpoint.apply(args=[endpoint.pk]).get()

    # then
    assert receiver.seqs("wedding:1") == [2, 4, 6]
    assert receiver.seqs("wedding:2") == [1, 2, 3, 4]
    assert {t for t, _, _ in receiver.accepted} == {"wedding:1", "wedding:2"}
    assert len({msg_id for _, _, msg_id in receiver.accepted}) == 7
    assert receiver.rejected == 0 and outcome["delivered"] == 7 and scheduled == []
    cursors = dict(
        EndpointCursor.objects.filter(endpoint=endpoint).values_list("topic", "last_seq")
    )
    assert cursors == {"wedding:1": 7, "wedding:2": 4}
    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}

    # and: a second run sends nothing again
    tasks.deliver_endpoint.apply(args=[endpoint.pk])
    assert len(receiver.accepted) == 7


def test_deliver__failures_back_off_exponentially_then_succeed_in_order(receiver, scheduled):
    # given: a receiver failing its first two attempts
    endpoint = _endpoint(receiver)
    receiver.fail_first = 2
    for n in range(3):
        _publish("wedding:1", n=n)

    # when/then: attempt 1 fails, the next is due 1 s later, and nothing after it is sent
    result = endpoint_deliver(endpoint_id=endpoint.pk, now=T0)
    delivery = Delivery.objects.get(topic="wedding:1", seq=1)
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.next_attempt_at == T0 + dt.timedelta(seconds=1) == result.retry_at
    assert "HTTP 500" in delivery.last_error
    # a run before that time attempts nothing
    endpoint_deliver(endpoint_id=endpoint.pk, now=T0 + dt.timedelta(milliseconds=500))
    assert len(receiver.attempts) == 1
    # attempt 2 fails: the next waits 2 s
    endpoint_deliver(endpoint_id=endpoint.pk, now=T0 + dt.timedelta(seconds=1))
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == T0 + dt.timedelta(seconds=3)
    # attempt 3 succeeds, and the rest follow in order
    result = endpoint_deliver(endpoint_id=endpoint.pk, now=T0 + dt.timedelta(seconds=3))
    assert result.delivered == 3 and result.retry_at is None
    assert [seq for _, seq, _ in receiver.attempts] == [1, 1, 1, 2, 3]
    assert receiver.seqs("wedding:1") == [1, 2, 3]
    # the same webhook-id on every attempt of one message
    assert len({msg_id for _, seq, msg_id in receiver.attempts if seq == 1}) == 1


def test_deliver__dead_after_max_attempts_stops_the_topic_until_replayed_in_admin(
    receiver, scheduled
):
    # given: a receiver that is down, and two events
    endpoint = _endpoint(receiver)
    receiver.fail_first = 1000
    _publish("wedding:5", n=1)
    _publish("wedding:5", n=2)

    # when: four attempts, the waits 1 s, 2 s, then capped at 3 s
    now, waits = T0, []
    for _ in range(4):
        result = endpoint_deliver(endpoint_id=endpoint.pk, now=now)
        if result.retry_at:
            waits.append((result.retry_at - now).total_seconds())
            now = result.retry_at

    # then: dead, only seq 1 ever tried, the topic waits
    assert waits == [1.0, 2.0, 3.0]
    dead = Delivery.objects.get(seq=1)
    assert (dead.status, dead.attempts, dead.next_attempt_at) == ("dead", 4, None)
    assert {seq for _, seq, _ in receiver.attempts} == {1}
    _publish("wedding:5", n=3)
    endpoint_deliver(endpoint_id=endpoint.pk, now=now + dt.timedelta(hours=1))
    assert len(receiver.attempts) == 4 and not Delivery.objects.filter(seq=3).exists()

    # when: the receiver is back and staff replay the dead delivery in admin
    receiver.fail_first = 0
    receiver.attempts.clear()
    staff = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(staff)
    response = client.post(
        "/admin/webhooks/delivery/",
        {"action": "replay_dead", "_selected_action": [dead.pk]},
    )
    assert response.status_code == 302
    endpoint_deliver(endpoint_id=endpoint.pk, now=now + dt.timedelta(hours=1))

    # then: everything in order
    assert receiver.seqs("wedding:5") == [1, 2, 3]


def test_redeliver__from_a_seq_sends_the_topic_again_in_order_with_the_same_ids(
    receiver, scheduled
):
    # given: four events delivered
    endpoint = _endpoint(receiver)
    for n in range(4):
        _publish("wedding:9", n=n)
    endpoint_deliver(endpoint_id=endpoint.pk)
    first = dict((seq, msg_id) for _, seq, msg_id in receiver.accepted)

    # when
    call_command(
        "webhooks_redeliver", endpoint=endpoint.pk, topic="wedding:9", from_seq=3, no_kick=True
    )
    endpoint_deliver(endpoint_id=endpoint.pk)

    # then
    assert receiver.seqs("wedding:9") == [1, 2, 3, 4, 3, 4]
    assert [msg_id for _, seq, msg_id in receiver.accepted[4:]] == [first[3], first[4]]


def test_signature__a_tampered_body_is_rejected(receiver, scheduled):
    # given: a delivered message
    endpoint = _endpoint(receiver)
    _publish("wedding:3", n=1)
    endpoint_deliver(endpoint_id=endpoint.pk)
    delivery = Delivery.objects.get()
    headers = signing.headers(endpoint.secret, delivery.message_id, int(time.time()), delivery.body)

    # when: the same headers with another body
    connection = http.client.HTTPConnection("127.0.0.1", receiver.server.server_address[1])
    connection.request("POST", "/", body=delivery.body.replace('"n":1', '"n":2'), headers=headers)
    status = connection.getresponse().status
    connection.close()

    # then
    assert status == 401 and receiver.rejected == 1
    assert receiver.seqs("wedding:3") == [1]


def test_hook__a_committed_event_kicks_each_matching_endpoint_once_per_burst(
    receiver, scheduled, django_capture_on_commit_callbacks
):
    # given
    weddings = _endpoint(receiver, topics="wedding:")
    _endpoint(receiver, topics="ops")

    # when: two events of one burst
    with django_capture_on_commit_callbacks(execute=True):
        _publish("wedding:1", n=1)
        _publish("wedding:1", n=2)

    # then: one run queued, for the matching endpoint only
    assert scheduled == [(weddings.pk, None)]


def test_deliver__one_run_at_a_time_per_endpoint(receiver, scheduled):
    # given: another run holds the endpoint's lease
    endpoint = _endpoint(receiver)
    _publish("wedding:1", n=1)
    Endpoint.objects.filter(pk=endpoint.pk).update(
        lease_until=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1), lease_owner="other"
    )

    # when
    result = endpoint_deliver(endpoint_id=endpoint.pk)

    # then
    assert not result.leased and receiver.attempts == []


def test_urls__only_http_and_no_private_address_unless_allowed(receiver, scheduled, settings):
    with pytest.raises(ValidationError):
        endpoint_register(name="x", url="ftp://example.com/")
    endpoint = _endpoint(receiver)
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    _publish("wedding:1", n=1)
    endpoint_deliver(endpoint_id=endpoint.pk, now=T0)
    delivery = Delivery.objects.get()
    assert delivery.status == "failed" and "private address" in delivery.last_error
    assert receiver.attempts == []
