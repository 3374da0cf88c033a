"""Server → client frames (PROTOCOL §4 replies, §6) as types.

The encoders in ``realtime/protocol.py`` build these frames as dicts and write them with
orjson, the fast path every delivery takes; these types describe what they write. They
are the source of the published JSON Schema (``docs/protocol.schema.json``, ``make
schema``), and the tests decode the frames a real consumer sends with them
(``decode_server_frame``, which rejects a field not described here), so a change to an
encoder that the types do not follow fails there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from .protocol import Ref, Seq

Topic = Annotated[str, Meta(description="wedding:<id>, supplier:<id> or ops (PROTOCOL §3)")]
Time = Annotated[
    str,
    Meta(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
        description="ISO-8601 UTC with milliseconds and Z",
    ),
]
ErrorCode = Literal[
    "bad_frame",
    "too_large",
    "unknown_topic",
    "forbidden",
    "invalid_payload",
    "conflict",
    "rate_limited",
    "limit_reached",
    "unavailable",
]


class Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of the frame parts: a field not described is an error."""


class Actor(Strict):
    """Who published an event; both null for the server and for a hidden placeholder."""

    user_id: int | None
    supplier_id: int | None


class Member(Strict):
    """One user present on a topic (one entry per user, whatever their connections)."""

    user_id: int
    name: str
    supplier_id: int | None


class TopicStatus(Strict):
    """A subscribe reply's entry for one topic: ok with its seq now (and, with ``since``,
    whether every later event was replayed), or the error that refused it."""

    status: Literal["ok", "error"]
    seq: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    recovered: bool | UnsetType = UNSET
    # The stream epoch the seq counts in (v1.1; realtime.epoch), on every ok entry.
    epoch: str | UnsetType = UNSET
    code: ErrorCode | UnsetType = UNSET
    message: str | UnsetType = UNSET


class ServerFrame(Strict, tag_field="type"):
    """Fields of every server frame: its ``type``."""


class Reply(ServerFrame, tag="reply"):
    """The answer to the client frame with this ``ref`` (PROTOCOL §4, §8). Ok replies carry
    what the frame asked for; error replies a code, a message and the extras of §8."""

    ref: Ref
    status: Literal["ok", "error"]
    # subscribe: a status per topic (also on an error where every topic was refused);
    # unsubscribe: the topics named.
    topics: dict[str, TopicStatus] | list[str] | UnsetType = UNSET
    # publish, presence, ack: the topic; publish and ack: the event's seq.
    topic: Topic | UnsetType = UNSET
    seq: Seq | UnsetType = UNSET
    duplicate: Literal[True] | UnsetType = UNSET
    members: list[Member] | UnsetType = UNSET
    # errors
    code: ErrorCode | UnsetType = UNSET
    message: str | UnsetType = UNSET
    field: str | UnsetType = UNSET
    retry_after_ms: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    current: dict[str, Any] | UnsetType = UNSET
    read_only: Literal[True] | UnsetType = UNSET


class EventFrame(ServerFrame, tag="event"):
    """One stored event of a topic, in seq order (PROTOCOL §6, §7). ``hidden`` is the
    placeholder of an event the reader's role may not read (§3): seq and ts only."""

    topic: Topic
    seq: Seq
    event: str
    priority: Literal["normal", "critical"]
    payload: dict[str, Any]
    actor: Actor
    ts: Time
    ack_required: Literal[True] | UnsetType = UNSET


class PresenceDiff(ServerFrame, tag="presence_diff"):
    """Users who arrived on a topic or fully left it (at most every 0.2 s per process)."""

    topic: Topic
    joins: list[Member]
    leaves: list[Member]


class Unsubscribed(ServerFrame, tag="unsubscribed"):
    """The server ended a subscription: access to the topic was withdrawn."""

    topic: Topic
    code: ErrorCode
    message: str


class ErrorFrame(ServerFrame, tag="error"):
    """The answer to a frame no ref could be read from (PROTOCOL §1)."""

    code: ErrorCode
    message: str


class Pong(ServerFrame, tag="pong"):
    """The answer to a ping."""

    ref: Ref


AnyServerFrame = Reply | EventFrame | PresenceDiff | Unsubscribed | ErrorFrame | Pong

_decoder = msgspec.json.Decoder(AnyServerFrame)


def decode_server_frame(text: str | bytes) -> AnyServerFrame:
    """A frame the server sent, as its type; ``msgspec.ValidationError`` when it is not
    one these types describe."""
    return _decoder.decode(text)
