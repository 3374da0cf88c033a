"""Property-based fuzz of random frames against a live consumer.

Whatever a client sends, the consumer never crashes, still answers a ping that follows,
and the event log holds only valid events with gapless seqs.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime.models import Event
from realtime.tokens import token_issue
from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from wedsync.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
EVENTS = [
    "timeline.item.created", "timeline.item.updated", "timeline.item.deleted",
    "timeline.shifted", "vendor.status", "message.posted", "emergency.raised",
    "emergency.resolved", "wedding.updated", "ack.updated", "nope",
]  # fmt: skip
TYPES = ["subscribe", "unsubscribe", "publish", "presence", "ack", "ping", "bogus"]


def frames(topic: str, item_id: int, supplier_id: int) -> st.SearchStrategy[Any]:
    """Frames near the valid ones (to reach deep code) and plain garbage."""
    topics = st.sampled_from([topic, "wedding:1", "ops", "supplier:1", "x", "wedding:0"])
    payload = st.fixed_dictionaries(
        {},
        optional={
            "text": st.text(max_size=50) | json_value,
            "id": st.sampled_from([item_id, -1, 0]) | json_value,
            "version": st.integers(-2, 5) | json_value,
            "title": st.text(max_size=30),
            "minutes": st.integers(-2000, 2000) | json_value,
            "from_item_id": st.just(item_id) | json_value,
            "supplier_id": st.just(supplier_id) | json_value,
            "status": st.sampled_from(["en_route", "done", "bad"]) | json_value,
            "kind": st.text(max_size=10),
            "starts_at": st.sampled_from(["2026-06-13T12:00:00Z", "yesterday"]) | json_value,
            "guest_count": st.integers(-5, 200000) | json_value,
        },
    )
    near_valid = st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES), "ref": st.text(max_size=40) | json_value},
        optional={
            "topic": topics | json_value,
            "topics": st.dictionaries(
                topics,
                st.just({}) | st.fixed_dictionaries({"since": st.integers(-3, 10) | json_value}),
            )
            | st.lists(topics)
            | json_value,
            "event": st.sampled_from(EVENTS) | json_value,
            "payload": payload | json_value,
            "seq": st.integers(-1, 10) | json_value,
            "idempotency_key": st.text(max_size=70) | json_value,
            "extra": json_value,
        },
    )
    # Publishes that pass validation often enough to reach the store and the broadcast.
    text = st.text(min_size=1, max_size=30)
    publish = st.fixed_dictionaries(
        {"type": st.just("publish"), "ref": st.text(max_size=8), "topic": st.just(topic)},
        optional={"idempotency_key": st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)},
    ).flatmap(
        lambda frame: st.one_of(
            st.fixed_dictionaries({"text": text}).map(
                lambda p: {**frame, "event": "message.posted", "payload": p}
            ),
            st.fixed_dictionaries({"kind": text, "text": text}).map(
                lambda p: {**frame, "event": "emergency.raised", "payload": p}
            ),
            st.fixed_dictionaries(
                {
                    "supplier_id": st.just(supplier_id),
                    "status": st.sampled_from(["en_route", "ready", "done", "late"]),
                }
            ).map(lambda p: {**frame, "event": "vendor.status", "payload": p}),
        )
    )
    return (
        publish.map(json.dumps)
        | near_valid.map(json.dumps)  # stdlib json: it also writes integers beyond 64 bits
        | json_value.map(json.dumps)
        | st.text(max_size=200)
        | st.binary(max_size=50)
    )


STORABLE = set(EVENTS) - {"nope"}
STATUSES = {"en_route", "arrived", "setting_up", "ready", "running_late", "done"}


def assert_valid(event: Event) -> None:
    """What any stored event must be, whatever frame produced it."""
    assert event.event in STORABLE, event.event
    assert isinstance(event.payload, dict)
    orjson.dumps(event.payload)  # re-encodable for every subscriber
    payload = event.payload
    if event.event == "message.posted":
        assert isinstance(payload["text"], str) and 1 <= len(payload["text"].strip()) <= 4000
    elif event.event == "vendor.status":
        assert payload["status"] in STATUSES
    elif event.event == "emergency.raised":
        assert payload["kind"].strip() and payload["text"].strip()
        assert event.priority == "critical" and event.ack_required
    elif event.event == "timeline.shifted":
        assert payload["minutes"] != 0 and abs(payload["minutes"]) <= 1440


def test_fuzz__random_frames_never_crash_and_store_only_valid_events():
    planner = make_user()
    wedding = make_wedding()
    supplier = make_supplier(category="planner", users=(planner,))
    make_booking(supplier=supplier, wedding=wedding)
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))
    token = token_issue(user=planner)

    async def exchange(batch: list[str | bytes]) -> None:
        comm = WebsocketCommunicator(application, f"/ws/realtime/?token={token}")
        connected, _ = await comm.connect(timeout=5)
        assert connected
        try:
            for frame in batch:
                key = "bytes" if isinstance(frame, bytes) else "text"
                await comm.send_input({"type": "websocket.receive", key: frame})
            await comm.send_to(text_data='{"type":"ping","ref":"fuzz-ping"}')
            while True:
                out = await comm.receive_output(5)
                # a legitimate close (rate limit) ends the exchange; a crash would be 1011
                if out["type"] == "websocket.close":
                    assert out.get("code") in {4008, 4009}, out
                    return
                if out.get("text") and orjson.loads(out["text"]).get("ref") == "fuzz-ping":
                    assert orjson.loads(out["text"])["type"] == "pong"
                    return
        finally:
            await comm.disconnect()

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(frames(wedding.topic, item.pk, supplier.pk), min_size=1, max_size=6))
    def run(batch: list[str | bytes]) -> None:
        async_to_sync(exchange)(batch)

    run()

    by_topic: dict[str, list[int]] = {}
    for event in Event.objects.order_by("topic", "seq"):
        by_topic.setdefault(event.topic, []).append(event.seq)
        assert_valid(event)
    assert by_topic, "the fuzz never reached the event store: make the frames more valid"
    for seqs in by_topic.values():
        assert seqs == list(range(1, len(seqs) + 1))
