"""Client frames in, replies out (realtime/protocol.py; PROTOCOL §1, §4, §6, §8)."""

from __future__ import annotations

import msgspec
import orjson
import pytest
from django.conf import settings
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from realtime import protocol
from realtime.errors import RealtimeError
from realtime.protocol import (
    MAX_FRAME_BYTES,
    Ack,
    Ping,
    Presence,
    Publish,
    Subscribe,
    SubscribeOptions,
    Unsubscribe,
    decode_frame,
    error_frame,
    error_text,
    pong,
    presence_diff,
    reply_error,
    reply_ok,
)


def _raises(data, code: str, **kwargs) -> RealtimeError:
    with pytest.raises(RealtimeError) as info:
        decode_frame(data, **kwargs)
    assert info.value.code == code, info.value.as_dict()
    return info.value


def _frame(**fields) -> str:
    return msgspec.json.encode(fields).decode()  # msgspec: integers of any size


# --- every frame type of PROTOCOL §4 ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"type":"subscribe","ref":"1","topics":{"wedding:42":{"since":117},"wedding:43":{}}}',
            Subscribe(
                ref="1",
                topics={
                    "wedding:42": SubscribeOptions(since=117),
                    "wedding:43": SubscribeOptions(since=None),
                },
            ),
        ),
        (
            '{"type":"unsubscribe","ref":"2","topics":["wedding:43"]}',
            Unsubscribe(ref="2", topics=["wedding:43"]),
        ),
        (
            '{"type":"publish","ref":"3","topic":"wedding:42","event":"vendor.status",'
            '"payload":{"supplier_id":3,"status":"arrived"},"idempotency_key":"0b6c"}',
            Publish(
                ref="3",
                topic="wedding:42",
                event="vendor.status",
                payload={"supplier_id": 3, "status": "arrived"},
                idempotency_key="0b6c",
            ),
        ),
        (
            '{"type":"publish","ref":"3","topic":"wedding:42","event":"message.posted",'
            '"payload":{"text":"hi"}}',
            Publish(ref="3", topic="wedding:42", event="message.posted", payload={"text": "hi"}),
        ),
        (
            '{"type":"presence","ref":"4","topic":"wedding:42"}',
            Presence(ref="4", topic="wedding:42"),
        ),
        (
            '{"type":"ack","ref":"6","topic":"wedding:42","seq":122}',
            Ack(ref="6", topic="wedding:42", seq=122),
        ),
        ('{"type":"ping","ref":"5"}', Ping(ref="5")),
    ],
)
def test_decode_frame__decodes_each_frame_type(text: str, expected: protocol.Frame) -> None:
    assert decode_frame(text) == expected
    assert decode_frame(text.encode()) == expected


def test_decode_frame__accepts_ref_of_32_characters_and_since_zero() -> None:
    frame = decode_frame(_frame(type="subscribe", ref="r" * 32, topics={"ops": {"since": 0}}))

    assert frame == Subscribe(ref="r" * 32, topics={"ops": SubscribeOptions(since=0)})


# --- bad_frame: cannot be routed ------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "ping"},
        {"type": "ping", "ref": 5},
        {"type": "ping", "ref": None},
        {"type": "ping", "ref": ["1"]},
        {"type": "ping", "ref": "r" * 33},
        # a bad ref wins over everything else that is wrong
        {"type": "ack", "ref": "r" * 33, "topic": "wedding:1", "seq": "x", "extra": 1},
        {"type": "nonsense", "ref": 1},
    ],
)
def test_decode_frame__bad_ref__bad_frame_without_ref(fields: dict) -> None:
    err = _raises(_frame(**fields), "bad_frame")

    assert "ref" not in err.extra
    assert orjson.loads(error_text(err)) == {
        "type": "error",
        "code": "bad_frame",
        "message": err.message,
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"ref": "7"},
        {"type": "pong", "ref": "7"},
        {"type": "reply", "ref": "7"},
        {"type": 3, "ref": "7"},
        {"type": "Ping", "ref": "7"},
    ],
)
def test_decode_frame__missing_or_unknown_type__bad_frame_with_ref(fields: dict) -> None:
    err = _raises(_frame(**fields), "bad_frame")

    assert err.extra == {"ref": "7"}
    reply = orjson.loads(error_text(err))
    assert reply["type"] == "reply"
    assert reply["ref"] == "7"
    assert reply["status"] == "error"
    assert reply["code"] == "bad_frame"


@pytest.mark.parametrize(
    "data",
    [
        "[1, 2]",
        '"ping"',
        "42",
        "null",
        "",
        "   ",
        "{",
        '{"type":"ping","ref":"1"} trailing',
        '{"type":"ping","ref":"1",}',
        "{'type':'ping','ref':'1'}",
        '{"type":"ping","ref":"\\ud800"}',  # lone surrogate escape: not a Unicode string
        "[" * 5000 + "]" * 5000,
        '{"type":"publish","ref":"1","topic":"t","event":"e","payload":{"deep":'
        + "[" * 5000
        + "]" * 5000
        + "}}",
    ],
)
def test_decode_frame__not_a_json_object__bad_frame(data: str) -> None:
    err = _raises(data, "bad_frame")

    assert "ref" not in err.extra


def test_decode_frame__binary_frame__bad_frame() -> None:
    err = _raises(b'{"type":"ping","ref":"1"}', "bad_frame", is_binary=True)

    assert "ref" not in err.extra
    assert "binary" in err.message


def test_decode_frame__no_data__bad_frame() -> None:
    _raises(None, "bad_frame")


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe",
        b'{"type":"ping","ref":"\xff"}',
        b'{"type":"publish","ref":"1","topic":"t","event":"e","payload":{"t":"\xc3\x28"}}',
        '{"type":"ping","ref":"\ud800"}',  # a str with a lone surrogate cannot be UTF-8
    ],
)
def test_decode_frame__invalid_utf8__bad_frame(data: str | bytes) -> None:
    err = _raises(data, "bad_frame")

    assert "ref" not in err.extra


# --- too_large -----------------------------------------------------------------------------


def _padded_ping(size_bytes: int, filler: str = "a") -> str:
    head = '{"type":"ping","ref":"1","pad":"'
    tail = '"}'
    room = size_bytes - len(head) - len(tail)
    width = len(filler.encode())
    return head + filler * (room // width) + "a" * (room % width) + tail


def test_decode_frame__over_64_kib__too_large() -> None:
    err = _raises(_padded_ping(MAX_FRAME_BYTES + 1), "too_large")

    assert "ref" not in err.extra


def test_decode_frame__exactly_64_kib__is_parsed() -> None:
    # the size check lets it through; the unknown "pad" field then makes it invalid
    err = _raises(_padded_ping(MAX_FRAME_BYTES), "invalid_payload")

    assert err.extra["field"] == "pad"


def test_decode_frame__size_is_counted_in_utf8_bytes() -> None:
    # given: 3-byte characters: ~22,000 characters but more than 65,536 bytes
    text = _padded_ping(MAX_FRAME_BYTES + 2, filler="€")
    assert len(text) < MAX_FRAME_BYTES < len(text.encode())

    # then
    _raises(text, "too_large")
    _raises(text.encode(), "too_large")


def test_decode_frame__oversized_binary_frame__too_large() -> None:
    _raises(b"x" * (MAX_FRAME_BYTES + 1), "too_large", is_binary=True)


# --- invalid_payload: known type, wrong fields ----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "ping", "ref": "1", "extra": True}, "extra"),
        ({"type": "ack", "ref": "1", "topic": "wedding:1", "seq": 1, "sq": 2}, "sq"),
        ({"type": "ack", "ref": "1", "topic": "wedding:1", "seq": "5"}, "seq"),
        ({"type": "ack", "ref": "1", "topic": "wedding:1", "seq": 5.0}, "seq"),
        ({"type": "ack", "ref": "1", "topic": "wedding:1", "seq": True}, "seq"),
        ({"type": "ack", "ref": "1", "topic": "wedding:1", "seq": 0}, "seq"),
        ({"type": "ack", "ref": "1", "topic": "wedding:1", "seq": 2**63}, "seq"),
        ({"type": "ack", "ref": "1", "topic": "wedding:1"}, "seq"),
        ({"type": "ack", "ref": "1", "topic": 42, "seq": 1}, "topic"),
        ({"type": "subscribe", "ref": "1", "topics": ["wedding:1"]}, "topics"),
        ({"type": "subscribe", "ref": "1", "topics": {}}, "topics"),
        ({"type": "subscribe", "ref": "1", "topics": {"wedding:1": 5}}, "topics.wedding:1"),
        (
            {"type": "subscribe", "ref": "1", "topics": {"ops": {}, "wedding:1": {"since": -1}}},
            "topics.wedding:1.since",
        ),
        (
            {"type": "subscribe", "ref": "1", "topics": {"wedding:1": {"since": "3"}}},
            "topics.wedding:1.since",
        ),
        (
            {"type": "subscribe", "ref": "1", "topics": {"ops": {}, "wedding:2": {"from": 3}}},
            "topics.wedding:2.from",
        ),
        ({"type": "unsubscribe", "ref": "1", "topics": {"wedding:1": {}}}, "topics"),
        ({"type": "unsubscribe", "ref": "1", "topics": ["ops", 3]}, "topics[1]"),
        ({"type": "unsubscribe", "ref": "1", "topics": []}, "topics"),
        ({"type": "publish", "ref": "1", "topic": "t", "event": "e", "payload": []}, "payload"),
        ({"type": "publish", "ref": "1", "topic": "t", "event": "e"}, "payload"),
        (
            {
                "type": "publish",
                "ref": "1",
                "topic": "t",
                "event": "e",
                "payload": {},
                "idempotency_key": "k" * 65,
            },
            "idempotency_key",
        ),
        (
            {
                "type": "publish",
                "ref": "1",
                "topic": "t",
                "event": "e",
                "payload": {},
                "idempotency_key": "",
            },
            "idempotency_key",
        ),
        (
            {
                "type": "publish",
                "ref": "1",
                "topic": "t",
                "event": "e",
                "payload": {},
                "priority": "critical",
            },
            "priority",
        ),
    ],
)
def test_decode_frame__wrong_fields__invalid_payload_naming_the_field(
    fields: dict, field: str
) -> None:
    err = _raises(_frame(**fields), "invalid_payload")

    assert err.extra == {"ref": "1", "field": field}
    reply = orjson.loads(error_text(err))
    assert reply == {
        "type": "reply",
        "ref": "1",
        "status": "error",
        "code": "invalid_payload",
        "message": err.message,
        "field": field,
    }


def test_decode_frame__unknown_field__message_names_it() -> None:
    err = _raises('{"type":"ping","ref":"1","colour":"blue"}', "invalid_payload")

    assert "colour" in err.message


@pytest.mark.parametrize(
    "payload",
    [
        '{"n":123456789012345678901234567890}',  # beyond 64 bits: orjson cannot re-encode it
        '{"n":1e400}',
        '{"n":' + "[" * 300 + "]" * 300 + "}",  # deeper than orjson encodes
    ],
)
def test_decode_frame__payload_that_cannot_be_reencoded__invalid_payload(payload: str) -> None:
    text = '{"type":"publish","ref":"9","topic":"wedding:1","event":"e","payload":' + payload + "}"

    err = _raises(text, "invalid_payload")

    assert err.extra == {"ref": "9", "field": "payload"}


def test_decode_frame__101_topics__invalid_payload_topics() -> None:
    topics = {f"wedding:{i}": {} for i in range(101)}

    err = _raises(_frame(type="subscribe", ref="1", topics=topics), "invalid_payload")

    assert err.extra["field"] == "topics"
    assert "100" in err.message


def test_decode_frame__100_topics__accepted() -> None:
    topics = {f"wedding:{i}": {"since": i} for i in range(100)}

    frame = decode_frame(_frame(type="subscribe", ref="1", topics=topics))

    assert isinstance(frame, Subscribe)
    assert len(frame.topics) == 100


def test_decode_frame__101_topics_to_unsubscribe__invalid_payload() -> None:
    topics = [f"wedding:{i}" for i in range(101)]

    err = _raises(_frame(type="unsubscribe", ref="1", topics=topics), "invalid_payload")

    assert err.extra["field"] == "topics"


def test_topic_limit_per_frame__matches_settings() -> None:
    assert settings.REALTIME_MAX_TOPICS_PER_FRAME == protocol.MAX_TOPICS_PER_FRAME


# --- encoders ------------------------------------------------------------------------------


def test_reply_ok__carries_fields() -> None:
    text = reply_ok("1", topics={"wedding:42": {"status": "ok", "seq": 121, "recovered": True}})

    assert isinstance(text, str)
    assert orjson.loads(text) == {
        "type": "reply",
        "ref": "1",
        "status": "ok",
        "topics": {"wedding:42": {"status": "ok", "seq": 121, "recovered": True}},
    }


def test_reply_ok__fields_cannot_override_the_envelope() -> None:
    with pytest.raises(ValueError, match="status"):
        reply_ok("1", status="error")


def test_reply_error__carries_code_message_and_extras() -> None:
    err = RealtimeError("conflict", "stale version", current={"id": 3, "version": 4})

    assert orjson.loads(reply_error("3", err)) == {
        "type": "reply",
        "ref": "3",
        "status": "error",
        "code": "conflict",
        "message": "stale version",
        "current": {"id": 3, "version": 4},
    }


def test_reply_error__extras_cannot_override_the_envelope() -> None:
    err = RealtimeError("bad_frame", "nope", ref="other", status="ok", type="event")

    reply = orjson.loads(reply_error("3", err))

    assert (reply["type"], reply["ref"], reply["status"]) == ("reply", "3", "error")


def test_error_frame__has_no_ref() -> None:
    err = RealtimeError("bad_frame", "frame is not valid UTF-8 JSON", ref="x")

    assert orjson.loads(error_frame(err)) == {
        "type": "error",
        "code": "bad_frame",
        "message": "frame is not valid UTF-8 JSON",
    }


def test_pong__echoes_ref() -> None:
    assert orjson.loads(pong("5")) == {"type": "pong", "ref": "5"}


def test_presence_diff__shape() -> None:
    joins = [{"user_id": 7, "name": "Zoë", "supplier_id": 3}]

    assert orjson.loads(presence_diff("wedding:42", joins, [])) == {
        "type": "presence_diff",
        "topic": "wedding:42",
        "joins": joins,
        "leaves": [],
    }


# --- properties ----------------------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
_json = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
_refs = st.none() | st.text(max_size=40) | st.integers() | st.just("r" * 32) | st.just("1")
_types = st.sampled_from(sorted(protocol.FRAME_TYPES)) | st.text(max_size=12) | _json_scalars
_field_names = st.sampled_from(
    ["topics", "topic", "event", "payload", "idempotency_key", "seq", "since", "extra"]
)
# Objects that look like frames: a type and a ref, then arbitrary values for real fields.
_frame_like = st.fixed_dictionaries(
    {},
    optional={
        "type": _types,
        "ref": _refs,
        "topic": _json_scalars,
        "event": _json_scalars,
        "seq": _json_scalars,
        "payload": _json,
        "idempotency_key": _json_scalars,
        "topics": _json
        | st.lists(st.text(max_size=12), max_size=4)
        | st.dictionaries(
            st.text(max_size=12),
            st.fixed_dictionaries({}, optional={"since": _json_scalars}) | _json,
            max_size=4,
        ),
    },
).flatmap(
    lambda d: st.dictionaries(_field_names, _json, max_size=2).map(lambda extra: {**extra, **d})
)


def _valid_ref(obj: object) -> str | None:
    ref = obj.get("ref") if isinstance(obj, dict) else None
    return ref if isinstance(ref, str) and len(ref) <= 32 else None


def _decodes_or_raises_realtime_error(data: str | bytes, obj: object = None) -> None:
    try:
        frame = decode_frame(data)
    except RealtimeError as err:
        assert err.code in {"bad_frame", "too_large", "invalid_payload"}
        # then the ref is echoed exactly when a valid one could be read
        if obj is not None and err.code != "too_large":
            assert err.extra.get("ref") == _valid_ref(obj)
        if err.code == "invalid_payload":
            assert err.extra.get("field")
        # every error can be sent
        assert orjson.loads(error_text(err))["code"] == err.code
    else:
        assert isinstance(frame, protocol.BaseFrame)
        if obj is not None:
            assert frame.ref == _valid_ref(obj)


@given(_json)
@hsettings(max_examples=300, deadline=None)
def test_decode_frame__any_json_value__frame_or_realtime_error(value: object) -> None:
    data = msgspec.json.encode(value)
    _decodes_or_raises_realtime_error(data.decode(), value)
    _decodes_or_raises_realtime_error(data, value)


@given(_frame_like)
@hsettings(max_examples=600, deadline=None)
def test_decode_frame__frame_like_objects__frame_or_realtime_error(obj: dict) -> None:
    _decodes_or_raises_realtime_error(msgspec.json.encode(obj).decode(), obj)


@given(st.text(max_size=200))
@hsettings(max_examples=300, deadline=None)
def test_decode_frame__any_text__frame_or_realtime_error(text: str) -> None:
    _decodes_or_raises_realtime_error(text)


@given(st.binary(max_size=200))
@hsettings(max_examples=300, deadline=None)
def test_decode_frame__any_bytes__frame_or_realtime_error(data: bytes) -> None:
    _decodes_or_raises_realtime_error(data)


@given(st.characters(codec="utf-8") | st.characters(categories=["Cs"]), st.integers(0, 3))
@hsettings(max_examples=100, deadline=None)
def test_decode_frame__odd_characters_in_a_ref__frame_or_realtime_error(char: str, at: int) -> None:
    text = '{"type":"ping","ref":"' + "ab"[:at] + char + '"}'
    _decodes_or_raises_realtime_error(text)


# What the server encodes: orjson takes 64-bit integers only.
_json64 = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
_json_objects = st.dictionaries(st.text(max_size=10), _json64, max_size=5)


@given(st.text(max_size=32), _json_objects)
@hsettings(max_examples=200, deadline=None)
def test_reply_ok__round_trips_through_orjson(ref: str, fields: dict) -> None:
    fields = {k: v for k, v in fields.items() if k not in {"type", "ref", "status"}}

    assert orjson.loads(reply_ok(ref, **fields)) == {
        "type": "reply",
        "ref": ref,
        "status": "ok",
        **fields,
    }


@given(
    st.text(max_size=32),
    st.sampled_from(sorted(protocol.FRAME_TYPES | {"x"})),
    st.text(max_size=50),
)
@hsettings(max_examples=100, deadline=None)
def test_reply_error_and_error_frame__round_trip_through_orjson(
    ref: str, field: str, message: str
) -> None:
    err = RealtimeError("invalid_payload", message, field=field)

    assert orjson.loads(reply_error(ref, err)) == {
        "type": "reply",
        "ref": ref,
        "status": "error",
        "code": "invalid_payload",
        "message": message,
        "field": field,
    }
    assert orjson.loads(error_frame(err)) == {
        "type": "error",
        "code": "invalid_payload",
        "message": message,
        "field": field,
    }


@given(st.text(max_size=32), st.text(max_size=40), st.lists(_json_objects, max_size=3))
@hsettings(max_examples=100, deadline=None)
def test_pong_and_presence_diff__round_trip_through_orjson(
    ref: str, topic: str, members: list[dict]
) -> None:
    assert orjson.loads(pong(ref)) == {"type": "pong", "ref": ref}
    assert orjson.loads(presence_diff(topic, members, members[:1])) == {
        "type": "presence_diff",
        "topic": topic,
        "joins": members,
        "leaves": members[:1],
    }
