"""The wire protocol (PROTOCOL §1, §4, §6, §8): typed client frames in, encoded replies out.

Client → server frames are msgspec Structs, a tagged union on ``type`` that rejects unknown
fields. ``decode_frame`` is the only way in; it raises ``RealtimeError`` with one of three
codes, split as follows:

* ``too_large``: over ``MAX_FRAME_BYTES`` UTF-8 bytes, checked before anything is parsed
  (also for binary frames). No ref is read; the consumer closes with ``CLOSE_TOO_LARGE``.
* ``bad_frame``: the frame cannot be *routed*: binary, no data, not UTF-8, not JSON, nested
  too deeply to parse, not a JSON object, ``type`` missing or unknown, or ``ref`` missing,
  not a string or longer than 32 characters. Retrying the same bytes cannot succeed and
  nothing about the frame is trusted, so nothing is executed.
* ``invalid_payload``: the frame can be routed (well-formed object, valid ref, known
  ``type``) but its fields are wrong: a missing or unknown field, a wrong type, a bound
  broken (``since`` < 0, ``seq`` < 1, more than ``MAX_TOPICS_PER_FRAME`` topics, an empty
  or over-64-character ``idempotency_key``, an ``epoch`` that is not 1 to 32 characters of
  ``[0-9A-Za-z_-]``, ...), or a publish ``payload`` orjson cannot
  re-encode (integers beyond 64 bits, nesting beyond 254 levels). ``extra["field"]`` names
  the field as a path, e.g. ``seq``, ``topics``, ``topics.wedding:42.since``, ``topics[3]``
  (unsubscribe), ``payload``. What is inside a payload is the event catalogue's to check.
  Topic names are not checked here: a bad one gets ``unknown_topic`` from ``topics.py``,
  per topic in a subscribe reply.

``extra["ref"]`` is set exactly when a valid ref was read from a well-formed JSON object, so
the consumer can answer with ``reply_error`` (ref known) or ``error_frame`` (no ref);
``error_text`` makes that choice. When the ref is bad, the frame gets ``bad_frame`` without a
ref whatever else is wrong with it (PROTOCOL §1).

Topic limit: more than 100 topics in one subscribe/unsubscribe frame is ``invalid_payload``
with ``field="topics"``, not ``limit_reached``. It is a property of the frame alone, so
retrying can never succeed: Centrifugo's "bad request" (107, "retrying request does not make
sense"), not its "limit exceeded" (106), which it returns for the per-connection channel
limit. Our per-connection limit (200 topics) is stateful and gets ``limit_reached``, per
topic in the subscribe reply (``topic_limit_reached``).

Server → client frames are built by the encoders below as ``str`` (orjson), ready for
``send(text_data=...)``: every frame the server sends is encoded here and nowhere else.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import orjson

from core.wire import wire_time
from realtime.errors import RealtimeError
from weddings import roles

if TYPE_CHECKING:
    from realtime.models import Event

# PROTOCOL §1: one text frame is at most 64 KiB of UTF-8.
MAX_FRAME_BYTES = 65536
# PROTOCOL §4: a ref is a string of at most 32 characters.
MAX_REF_CHARS = 32
# PROTOCOL §4: topics named in one subscribe (or unsubscribe) frame. Part of the wire
# contract, hence a constant here (the Python client imports this module without Django);
# settings.REALTIME_MAX_TOPICS_PER_FRAME mirrors it and a test keeps the two equal.
MAX_TOPICS_PER_FRAME = 100
# IdempotencyKey.key is char(64).
MAX_IDEMPOTENCY_KEY_CHARS = 64
# Seqs are BigInteger columns: anything above cannot exist, so it is refused at the edge
# (msgspec itself would accept arbitrarily large JSON integers).
MAX_SEQ = 2**63 - 1
# PROTOCOL §4 (v1.1): a stream epoch is opaque to clients. The server makes 12 hex
# characters (``realtime.epoch``); what a client may send back is bounded more loosely,
# so that a longer epoch later stays within the contract, and limited to URL-safe
# characters, so that it travels unescaped in the history's query string as well.
MAX_EPOCH_CHARS = 32
EPOCH_PATTERN = r"^[0-9A-Za-z_-]*\Z"  # \Z: "$" would let a trailing newline through

# Close codes (PROTOCOL §8), for the consumer.
CLOSE_STALE = 4000
CLOSE_UNAUTHENTICATED = 4001
CLOSE_POLICY = 4008
CLOSE_TOO_LARGE = 4009
CLOSE_CONNECTION_LIMIT = 4029
CLOSE_RESTARTING = 1012
CLOSE_OVERLOADED = 1013

Ref = Annotated[str, msgspec.Meta(max_length=MAX_REF_CHARS)]
Since = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
Epoch = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_EPOCH_CHARS, pattern=EPOCH_PATTERN)
]


# gc=False: frames hold only JSON data (no reference cycles), and keeping millions of
# short-lived objects out of the collector's tracking matters (FINDINGS: GC pauses).
class BaseFrame(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, gc=False):
    """Fields every client frame has."""

    ref: Ref


class SubscribeOptions(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """Per-topic options of a subscribe frame; ``since`` asks for a replay after that seq,
    ``epoch`` (v1.1) names the history ``since`` counts in: another than the server's
    present one gets ``recovered: false`` and no replay. Without ``since`` it is unused."""

    since: Since | None = None
    epoch: Epoch | None = None


class Subscribe(BaseFrame, tag="subscribe"):
    topics: Annotated[
        dict[str, SubscribeOptions], msgspec.Meta(min_length=1, max_length=MAX_TOPICS_PER_FRAME)
    ]


class Unsubscribe(BaseFrame, tag="unsubscribe"):
    topics: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_TOPICS_PER_FRAME)]


class Publish(BaseFrame, tag="publish"):
    topic: str
    event: str
    payload: dict[str, Any]
    idempotency_key: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS)] | None
    ) = None


class Presence(BaseFrame, tag="presence"):
    topic: str


class Ack(BaseFrame, tag="ack"):
    topic: str
    seq: Seq


class Ping(BaseFrame, tag="ping"):
    pass


Frame = Subscribe | Unsubscribe | Publish | Presence | Ack | Ping
FRAME_TYPES: frozenset[str] = frozenset(
    cls.__struct_config__.tag for cls in (Subscribe, Unsubscribe, Publish, Presence, Ack, Ping)
)

# Reused: building a decoder is the expensive part, decoding with one is cheap.
_decoder = msgspec.json.Decoder(Frame)
# The error path only: top-level keys with their values left undecoded, to read ref/type.
_shallow_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ref_decoder = msgspec.json.Decoder(Ref)
_str_decoder = msgspec.json.Decoder(str)

_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<name>[^`]*)`")


def decode_frame(data: str | bytes | None, *, is_binary: bool = False) -> Frame:
    """Decode one received WebSocket frame into a typed frame, or raise RealtimeError.

    Called by the consumer for every frame; ``text_data`` as ``data``, or ``bytes_data``
    with ``is_binary=True``.
    """
    if data is None:
        raise RealtimeError("bad_frame", "empty frame")
    _check_size(data)
    if is_binary:
        raise RealtimeError("bad_frame", "binary frames are not accepted; send JSON text")
    try:
        frame = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        # Well-formed so far, but not a valid frame: work out what to say (slow path).
        raise _classify(data, exc) from None
    except (msgspec.DecodeError, UnicodeError):
        raise RealtimeError("bad_frame", "frame is not valid UTF-8 JSON") from None
    except RecursionError:
        raise RealtimeError("bad_frame", "frame is nested too deeply") from None
    if type(frame) is Publish:
        _check_encodable(frame)
    return frame


def _check_encodable(frame: Publish) -> None:
    # msgspec accepts any JSON integer and ~1000 levels of nesting; orjson, which encodes
    # the stored event for every subscriber and for replays, refuses integers beyond 64 bits
    # and nesting beyond 254 levels. Such a payload would be stored and then poison the
    # topic's delivery, so it is refused here (~0.2 µs per publish; publishes are rate-limited).
    try:
        orjson.dumps(frame.payload)
    except orjson.JSONEncodeError as exc:
        raise RealtimeError(
            "invalid_payload",
            f"invalid payload: {exc}",
            ref=frame.ref,
            field="payload",
        ) from None


def _check_size(data: str | bytes) -> None:
    n = len(data)
    if isinstance(data, str) and n <= MAX_FRAME_BYTES < 4 * n and not data.isascii():
        # Only frames that might be too large pay for the UTF-8 measurement.
        n = len(data.encode("utf-8", "surrogatepass"))
    if n > MAX_FRAME_BYTES:
        raise RealtimeError("too_large", f"frame is larger than {MAX_FRAME_BYTES} bytes")


def _classify(data: str | bytes, exc: msgspec.ValidationError) -> RealtimeError:
    try:
        fields = _shallow_decoder.decode(data)
    except msgspec.ValidationError:
        return RealtimeError("bad_frame", "frame must be a JSON object")
    except (msgspec.DecodeError, UnicodeError, RecursionError):
        return RealtimeError("bad_frame", "frame is not valid UTF-8 JSON")

    ref = _read(fields.get("ref"), _ref_decoder)
    if ref is None:
        return RealtimeError(
            "bad_frame", f"ref must be a string of at most {MAX_REF_CHARS} characters"
        )
    frame_type = _read(fields.get("type"), _str_decoder)
    if frame_type not in FRAME_TYPES:
        return RealtimeError(
            "bad_frame",
            f"type must be one of {', '.join(sorted(FRAME_TYPES))}",
            ref=ref,
        )

    reason = str(exc)
    field = _field_path(reason, fields)
    if reason.startswith("Object contains unknown field"):
        message = f"unknown field {field!r}"
    elif reason.startswith("Object missing required field"):
        message = f"missing field {field!r}"
    elif field == "topics" and "length <=" in reason:
        message = f"at most {MAX_TOPICS_PER_FRAME} topics in one frame"
    else:
        at = _AT_PATH.search(reason)
        message = f"invalid {field or frame_type}: {reason[: at.start()] if at else reason}"
    extra: dict[str, Any] = {"ref": ref}
    if field:
        extra["field"] = field
    return RealtimeError("invalid_payload", message, **extra)


def _read(raw: msgspec.Raw | None, decoder: msgspec.json.Decoder) -> Any:
    if raw is None:
        return None
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError, RecursionError):
        return None


def _field_path(reason: str, fields: dict[str, msgspec.Raw]) -> str:
    """The offending field as a dotted path, from msgspec's error message."""
    at = _AT_PATH.search(reason)
    path = at.group("path").lstrip(".") if at else ""
    named = _NAMED_FIELD.match(reason)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    # msgspec writes a dict key as "[...]". Only subscribe's topics are worth resolving:
    # payload contents are validated and named by the event catalogue.
    if path.startswith("topics[...]"):
        key = _bad_topic_key(fields.get("topics"))
        if key is not None:
            return f"topics.{key}{path[len('topics[...]') :]}"
    return path.split("[...]", 1)[0]


def _bad_topic_key(raw: msgspec.Raw | None) -> str | None:
    try:
        topics = msgspec.json.decode(raw) if raw is not None else None
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError, RecursionError):
        return None
    if not isinstance(topics, dict):
        return None
    for key, value in topics.items():
        try:
            msgspec.convert(value, SubscribeOptions)
        except msgspec.ValidationError:
            return key
    return None


# --- server → client ------------------------------------------------------------------

_REPLY_KEYS = frozenset({"type", "ref", "status"})


def reply_ok(ref: str, **fields: Any) -> str:
    """The ok reply to the client frame with this ref; ``fields`` are added to it."""
    if not _REPLY_KEYS.isdisjoint(fields):
        raise ValueError(f"reply fields may not override {sorted(_REPLY_KEYS & fields.keys())}")
    return orjson.dumps({"type": "reply", "ref": ref, "status": "ok", **fields}).decode()


def reply_error(ref: str, err: RealtimeError) -> str:
    """The error reply to the client frame with this ref: code, message and err's extras."""
    reply: dict[str, Any] = {"type": "reply", "ref": ref, "status": "error"}
    for key, value in err.as_dict().items():
        reply.setdefault(key, value)  # an extra never overrides type/ref/status
    return orjson.dumps(reply).decode()


def error_frame(err: RealtimeError) -> str:
    """The error frame for a frame no ref could be read from (PROTOCOL §6)."""
    body: dict[str, Any] = {"type": "error"}
    for key, value in err.as_dict().items():
        if key != "ref":
            body.setdefault(key, value)
    return orjson.dumps(body).decode()


def error_text(err: RealtimeError, ref: str | None = None) -> str:
    """An error reply when a ref is known (given, or read by decode_frame), else an error frame."""
    if ref is None:
        ref = err.extra.get("ref")
    return error_frame(err) if ref is None else reply_error(ref, err)


def pong(ref: str) -> str:
    """The answer to a ping frame."""
    return orjson.dumps({"type": "pong", "ref": ref}).decode()


def presence_diff(topic: str, joins: list[dict], leaves: list[dict]) -> str:
    """Users who arrived on / fully left a topic (PROTOCOL §6), broadcast to its subscribers."""
    return orjson.dumps(
        {"type": "presence_diff", "topic": topic, "joins": joins, "leaves": leaves}
    ).decode()


def unsubscribed(topic: str, code: str, message: str) -> str:
    """The server ended a subscription (PROTOCOL §6): e.g. access to the topic was withdrawn."""
    return orjson.dumps(
        {"type": "unsubscribed", "topic": topic, "code": code, "message": message}
    ).decode()


# --- subscribe replies ------------------------------------------------------------------


def topic_ok(seq: int, recovered: bool | None = None, epoch: str | None = None) -> dict[str, Any]:
    """A subscribe reply's entry for a topic subscribed: its seq now, with ``since``
    whether every event after it could be replayed (``recovered``), and (v1.1) the stream
    epoch that seq counts in, which the client sends back with its next ``since``."""
    status: dict[str, Any] = {"status": "ok", "seq": seq}
    if recovered is not None:
        status["recovered"] = recovered
    if epoch is not None:
        status["epoch"] = epoch
    return status


def topic_refused(err: RealtimeError) -> dict[str, Any]:
    """A subscribe reply's entry for a topic refused (``unknown_topic``, ``forbidden``)."""
    return {"status": "error", **err.as_dict()}


def topic_limit_reached(limit: int) -> dict[str, Any]:
    """A subscribe reply's entry for a topic beyond the per-connection limit."""
    return {
        "status": "error",
        "code": "limit_reached",
        "message": f"at most {limit} topics per connection",
    }


def subscribe_reply(ref: str, statuses: dict[str, dict[str, Any]]) -> str:
    """The reply to a subscribe: ok with each topic's entry, or an error (``forbidden``,
    the entries in ``topics``) when not one topic could be subscribed."""
    if any(s["status"] == "ok" for s in statuses.values()) or not statuses:
        return reply_ok(ref, topics=statuses)
    return reply_error(
        ref, RealtimeError("forbidden", "no topic could be subscribed", topics=statuses)
    )


# --- events -------------------------------------------------------------------------------

utc_ms = wire_time  # the one wire format of times, shared with the domain payloads


def event_frame(event: Event) -> dict[str, Any]:
    """The PROTOCOL §6 event frame of a stored event."""
    frame: dict[str, Any] = {
        "type": "event",
        "topic": event.topic,
        "seq": event.seq,
        "event": event.event,
        "priority": event.priority,
        "payload": event.payload,
        "actor": {"user_id": event.actor_user_id, "supplier_id": event.actor_supplier_id},
        "ts": utc_ms(event.created_at),
    }
    if event.ack_required:
        frame["ack_required"] = True
    return frame


def event_frame_text(event: Event) -> str:
    """The event frame encoded once, so consumers forward it without re-encoding."""
    return orjson.dumps(event_frame(event)).decode()


# The event name of a placeholder: an event of a wedding topic the reader's role may not
# read (docs/protocol.md §6, ``weddings.roles``). Its seq keeps the stream contiguous.
HIDDEN_EVENT = "hidden"


def plan_view_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """An event frame as a reader of the run sheet only (the couple) receives it: the
    coordination events as ``hidden`` placeholders (seq and time kept, nothing else), the
    coordination fields of the others left out. The frame itself is not changed."""
    if frame["event"] in roles.COORDINATION_EVENTS:
        return {
            "type": "event",
            "topic": frame["topic"],
            "seq": frame["seq"],
            "event": HIDDEN_EVENT,
            "priority": "normal",
            "payload": {},
            "actor": {"user_id": None, "supplier_id": None},
            "ts": frame["ts"],
        }
    payload = roles.redacted_payload(frame["event"], frame["payload"])
    return frame if payload is frame["payload"] else {**frame, "payload": payload}


@functools.lru_cache(maxsize=256)
def plan_view_text(text: str) -> str:
    """``plan_view_frame`` of an encoded event frame. The hub hands one string object to
    every local subscriber of an event: each process decodes it once for all the
    run-sheet readers of the topic. Only the latest events are shared that way, so the
    cache is small (256 frames of at most 64 KiB: bounded memory on the delivery path)."""
    frame = orjson.loads(text)
    view = plan_view_frame(frame)
    return text if view is frame else orjson.dumps(view).decode()
