"""The JSON Schema of the WebSocket frames (PROTOCOL §4, §5, §6), made from the msgspec
types that decode and describe them: ``docs/protocol.schema.json``.

Regenerated with ``make schema`` (``manage.py protocol_schema``); a test fails while the
published file differs from what these types make.
"""

from __future__ import annotations

from typing import Any

import msgspec

from . import frames, protocol
from .catalogue import CATALOGUE

SCHEMA_PATH = "docs/protocol.schema.json"
_REF = "#/$defs/{name}"


def protocol_schema() -> dict[str, Any]:
    """The schema document: client frames, server frames and each event's publish payload,
    one definition per type under ``$defs``."""
    payloads = {name: spec.payload_type for name, spec in CATALOGUE.items()}
    (client, server, *payload_refs), defs = msgspec.json.schema_components(
        [protocol.Frame, frames.AnyServerFrame, *payloads.values()], ref_template=_REF
    )
    defs["ClientFrame"] = {
        "description": "A frame a client sends (PROTOCOL §4); the server answers each with "
        "a reply echoing its ref.",
        **client,
    }
    defs["ServerFrame"] = {
        "description": "A frame the server sends (PROTOCOL §4 replies, §6).",
        **server,
    }
    defs["PublishPayloads"] = {
        "description": "The payload a publish frame carries, by its event (PROTOCOL §5). "
        "What the server stores and broadcasts may add to it (the table of §5).",
        "type": "object",
        "properties": dict(zip(payloads, payload_refs, strict=True)),
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "WedSync Realtime WebSocket frames (protocol v1.1)",
        "description": f"Generated from realtime/protocol.py, realtime/frames.py and the "
        f"event catalogue by `make schema`; do not edit {SCHEMA_PATH} by hand. Every frame "
        "is one JSON object in a text frame of at most 64 KiB (docs/protocol.md).",
        "oneOf": [
            {"$ref": _REF.format(name="ClientFrame")},
            {"$ref": _REF.format(name="ServerFrame")},
        ],
        "$defs": dict(sorted(defs.items())),
    }


def protocol_schema_text() -> str:
    """The schema document as the published file holds it."""
    return msgspec.json.format(msgspec.json.encode(protocol_schema()), indent=2).decode() + "\n"
