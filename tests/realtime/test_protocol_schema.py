"""docs/protocol.schema.json: the JSON Schema of the WebSocket frames, generated from the
msgspec types (``make schema``). The published file must be what the types make, and the
frames a real consumer sends in a session that meets every kind of server frame must
match both the server frame types and the schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from realtime.frames import decode_server_frame
from realtime.schema import SCHEMA_PATH, protocol_schema_text
from realtime.tokens import token_issue
from tests.realtime.test_consumer import Conn, world
from wedsync.asgi import application

BASE_DIR = Path(__file__).resolve().parents[2]
PUBLISHED = json.loads((BASE_DIR / SCHEMA_PATH).read_text())


def validator(definition: str) -> jsonschema.Draft202012Validator:
    """A validator of one definition of the published schema."""
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/$defs/{definition}", "$defs": PUBLISHED["$defs"]},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def test_schema__published_file_is_what_the_frame_types_make() -> None:
    published = (BASE_DIR / SCHEMA_PATH).read_text()

    assert published == protocol_schema_text(), f"{SCHEMA_PATH} is out of date: run `make schema`"


def test_schema__is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(PUBLISHED)


def _doc_client_frames() -> list[dict[str, Any]]:
    """The client frames of docs/protocol.md §4's example block, ``{...}`` filled in."""
    text = (BASE_DIR / "docs/protocol.md").read_text()
    block = text.split("## 4. Client → server frames", 1)[1].split("```", 2)[1]
    lines = [line for line in block.splitlines() if line.startswith("{")]
    return [json.loads(re.sub(r'"payload":\{\.\.\.\}', '"payload":{}', ln)) for ln in lines]


def test_schema__client_frames_of_the_protocol_doc_are_valid_and_mistakes_are_not() -> None:
    frames = _doc_client_frames()
    check = validator("ClientFrame")

    assert {f["type"] for f in frames} == {
        "subscribe", "unsubscribe", "publish", "presence", "ack", "ping",
    }  # fmt: skip
    for frame in frames:
        check.validate(frame)
    for wrong in (
        {"type": "ping"},  # no ref
        {"type": "ping", "ref": "1", "extra": True},  # unknown field
        {"type": "ack", "ref": "1", "topic": "wedding:1", "seq": 0},  # seq below 1
        {"type": "ping", "ref": "x" * 33},  # ref too long
        {"type": "shout", "ref": "1"},  # unknown type
    ):
        assert not check.is_valid(wrong), wrong


def test_schema__publish_payloads_follow_the_catalogue() -> None:
    payloads = validator("PublishPayloads")

    assert payloads.is_valid({"vendor.status": {"supplier_id": 3, "status": "arrived"}})
    assert not payloads.is_valid({"vendor.status": {"supplier_id": 3, "status": "lost"}})
    assert not payloads.is_valid({"message.posted": {"text": "hi", "colour": "red"}})
    assert not payloads.is_valid({"not.an.event": {}})


# --- a real session ---------------------------------------------------------------------


class Recording(Conn):
    """A connection that keeps every frame the server sent it, as text."""

    def __init__(self, comm: WebsocketCommunicator, sent: list[str]) -> None:
        super().__init__(comm)
        self.sent = sent

    async def _read(self, timeout: float) -> dict[str, Any]:
        text = await self.comm.receive_from(timeout)
        self.sent.append(text)
        return orjson.loads(text)


@pytest.fixture
async def session():
    """Opens recording connections as a user; every frame any of them got is in ``.sent``."""
    comms: list[WebsocketCommunicator] = []
    sent: list[str] = []

    async def open_(user: Any) -> Recording:
        token = await database_sync_to_async(token_issue)(user=user)
        comm = WebsocketCommunicator(application, f"/ws/realtime/?token={token}")
        comms.append(comm)
        connected, _ = await comm.connect(timeout=5)
        assert connected
        return Recording(comm, sent)

    open_.sent = sent
    yield open_
    for comm in comms:
        await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_server_frames__a_session_meeting_every_kind__all_match_types_and_schema(session):
    # given a planner and a photographer on wedding A, and its couple
    w = await world()
    topic = w["a"].topic
    planner, photographer = await session(w["planner"]), await session(w["photographer"])
    couple = await session(w["couple"])

    # when they go through every kind of exchange the protocol has
    await planner.request(
        {"type": "subscribe", "topics": {topic: {"since": 0}, "wedding:999999": {}, "nope": {}}}
    )
    await photographer.request({"type": "subscribe", "topics": {topic: {}}})
    await planner.recv_type("presence_diff")
    message = {"type": "publish", "topic": topic, "event": "message.posted"}
    await planner.request({**message, "payload": {"text": "doors open"}, "idempotency_key": "k1"})
    await planner.request({**message, "payload": {"text": "doors open"}, "idempotency_key": "k1"})
    raised = await planner.request(
        {**message, "event": "emergency.raised", "payload": {"kind": "medical", "text": "help"}}
    )
    await photographer.request({"type": "ack", "topic": topic, "seq": raised["seq"]})
    stale = {"id": w["item"].pk, "version": 99, "title": "Later"}
    await planner.request({**message, "event": "timeline.item.updated", "payload": stale})
    await planner.request({**message, "payload": {"text": "x"}, "colour": "red"})
    await planner.request({"type": "presence", "topic": topic})
    await planner.request({"type": "ping"})
    await planner.send({"type": "ping"})  # no ref: an error frame
    await planner.recv_type("error")
    await couple.request({"type": "subscribe", "topics": {topic: {"since": 0}}})
    await couple.recv_type("event")
    await _unbook(w)
    await photographer.recv_type("unsubscribed")
    await planner.request({"type": "unsubscribe", "topics": [topic]})

    # then every frame the server sent is one the types and the schema describe
    check = validator("ServerFrame")
    kinds = set()
    for text in session.sent:
        frame = decode_server_frame(text)  # msgspec.ValidationError on an unknown field
        kinds.add(type(frame).__name__)
        errors = [e.message for e in check.iter_errors(orjson.loads(text))]
        assert errors == [], (text, errors)
    assert kinds == {"Reply", "EventFrame", "PresenceDiff", "Unsubscribed", "ErrorFrame", "Pong"}
    events = {json.loads(t)["event"] for t in session.sent if '"type":"event"' in t}
    assert {"message.posted", "emergency.raised", "ack.updated", "hidden"} <= events


@database_sync_to_async
def _unbook(w: dict[str, Any]) -> None:
    from weddings.models import Booking

    booking = Booking.objects.get(supplier=w["photo_co"], wedding=w["a"])
    booking.active = False
    booking.save()
