"""The pgoutput reader on the bytes PostgreSQL 15 sends (protocol 1), without a server."""

from __future__ import annotations

import struct

import pytest

from platform_changes.pgoutput import (
    UNCHANGED,
    Commit,
    ProtocolError,
    RowChange,
    lsn_from_text,
    lsn_text,
    parse,
)

OID = 16385


def relation(*columns: str, keys: tuple[str, ...] = ("id",)) -> bytes:
    out = b"R" + struct.pack("!I", OID) + b"public\0platform_timeline\0d"
    out += struct.pack("!h", len(columns))
    for name in columns:
        out += bytes([1 if name in keys else 0]) + name.encode() + b"\0"
        out += struct.pack("!Ii", 25, -1)
    return out


def values(*items: object) -> bytes:
    out = struct.pack("!h", len(items))
    for item in items:
        if item is None:
            out += b"n"
        elif item is UNCHANGED:
            out += b"u"
        else:
            data = str(item).encode()
            out += b"t" + struct.pack("!i", len(data)) + data
    return out


def test_row_changes__named_by_the_relations_columns():
    relations: dict = {}
    parse(relation("id", "title", "ends_at", "notes"), relations)

    insert = parse(b"I" + struct.pack("!I", OID) + b"N" + values("7", "Vows", None, "x"), relations)
    update = parse(
        b"U" + struct.pack("!I", OID) + b"K" + values("6", None, None, None)
        + b"N" + values("7", "Vows", None, UNCHANGED),
        relations,
    )  # fmt: skip
    delete = parse(b"D" + struct.pack("!I", OID) + b"K" + values("7", None, None, None), relations)

    assert relations[OID].qualified == "public.platform_timeline"
    assert insert == RowChange(
        "insert", OID, {"id": "7", "title": "Vows", "ends_at": None, "notes": "x"}, None
    )
    assert update.op == "update" and update.old["id"] == "6"
    assert update.new["notes"] is UNCHANGED  # a TOASTed value the update did not touch
    assert delete == RowChange("delete", OID, None, {"id": "7", "title": None,
                                                     "ends_at": None, "notes": None})  # fmt: skip


def test_commit__carries_the_lsn_the_slot_is_advanced_to():
    message = parse(b"C\0" + struct.pack("!QQq", 0x153B598, 0x153B5C8, 0), {})

    assert message == Commit(commit_lsn=0x153B598, end_lsn=0x153B5C8)
    assert lsn_text(message.end_lsn) == "0/153B5C8"
    assert lsn_from_text("1/0") == 1 << 32


@pytest.mark.parametrize(
    "data",
    [
        b"Z",  # an unknown message
        b"I" + struct.pack("!I", OID),  # ends early
        b"I" + struct.pack("!I", OID) + b"N" + values("1", "a"),  # values for no relation
        b"I" + struct.pack("!I", OID) + b"N" + struct.pack("!h", 1) + b"x",  # unknown kind
    ],
)
def test_malformed_messages__raise_protocol_error(data):
    with pytest.raises(ProtocolError):
        parse(data, {})
