"""A reader of PostgreSQL's ``pgoutput`` logical replication messages (protocol 1).

``pg_logical_slot_peek_binary_changes(slot, ..., 'proto_version', '1',
'publication_names', ..., 'messages', 'true')`` returns one ``bytea`` per message; this
module turns them into plain values. Only what the change stream needs is read: begin,
commit, relation, insert, update, delete, truncate and logical messages (the
consumer's heartbeat). Column values stay in PostgreSQL's text output form; the caller
converts the columns it knows. Pure Python, no Django: unit-testable on bytes.

Reference: "Logical Replication Message Formats" in the PostgreSQL 15 manual.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# A column's value in a tuple: text, NULL, or unchanged TOASTed (an update that did not
# touch a large value sends this marker instead of the value).
UNCHANGED = object()


class ProtocolError(ValueError):
    """A message this reader cannot parse (a newer protocol, or corrupt bytes)."""


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    columns: tuple[str, ...]
    key_columns: frozenset[str] = field(default_factory=frozenset)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class RowChange:
    """An insert, update or delete of one row. ``new`` holds the row after an insert or
    update; ``old`` the key (or the full row with REPLICA IDENTITY FULL) of a delete, and
    of an update that changed the key."""

    op: str  # "insert" | "update" | "delete"
    relation_oid: int
    new: dict[str, object] | None
    old: dict[str, object] | None


@dataclass(frozen=True)
class Truncate:
    relation_oids: tuple[int, ...]


@dataclass(frozen=True)
class LogicalMessage:
    transactional: bool
    prefix: str
    content: bytes


Message = Begin | Commit | Relation | RowChange | Truncate | LogicalMessage | None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("message ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def i16(self) -> int:
        return struct.unpack("!h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack("!i", self.take(4))[0]

    def u32(self) -> int:
        return struct.unpack("!I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("!Q", self.take(8))[0]

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("unterminated string")
        text = self.data[self.pos : end].decode()
        self.pos = end + 1
        return text

    def tuple_values(self) -> list[object]:
        values: list[object] = []
        for _ in range(self.i16()):
            kind = chr(self.u8())
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind in ("t", "b"):
                raw = self.take(self.i32())
                values.append(raw.decode() if kind == "t" else raw)
            else:
                raise ProtocolError(f"unknown tuple value kind {kind!r}")
        return values


def _named(relation: Relation | None, values: list[object]) -> dict[str, object]:
    if relation is None:
        raise ProtocolError("a row change before its relation message")
    if len(values) != len(relation.columns):
        raise ProtocolError(f"{relation.qualified}: {len(values)} values for the columns")
    return dict(zip(relation.columns, values, strict=True))


def _relation(r: _Reader) -> Relation:
    oid, schema, name = r.u32(), r.cstring(), r.cstring()
    r.u8()  # replica identity setting
    columns, keys = [], set()
    for _ in range(r.i16()):
        flags, column = r.u8(), r.cstring()
        r.u32()  # type oid
        r.i32()  # type modifier
        columns.append(column)
        if flags & 1:
            keys.add(column)
    return Relation(oid, schema or "public", name, tuple(columns), frozenset(keys))


def _row_change(kind: str, r: _Reader, relations: dict[int, Relation]) -> RowChange:
    oid = r.u32()
    relation = relations.get(oid)
    old = new = None
    marker = chr(r.u8())
    if kind == "I":
        if marker != "N":
            raise ProtocolError(f"insert: unexpected {marker!r}")
        return RowChange("insert", oid, _named(relation, r.tuple_values()), None)
    if marker in ("K", "O"):
        old = _named(relation, r.tuple_values())
        if kind == "D":
            return RowChange("delete", oid, None, old)
        marker = chr(r.u8())
    if kind == "U" and marker == "N":
        new = _named(relation, r.tuple_values())
        return RowChange("update", oid, new, old)
    raise ProtocolError(f"{kind}: unexpected {marker!r}")


def parse(data: bytes, relations: dict[int, Relation]) -> Message:
    """One pgoutput message; a ``Relation`` is also remembered in ``relations`` (the
    row changes that follow name their table by its oid). None for the kinds the change
    stream does not use (origin, type)."""
    r = _Reader(bytes(data))
    kind = chr(r.u8())
    if kind == "B":
        final_lsn = r.u64()
        r.u64()  # commit timestamp
        return Begin(final_lsn, r.u32())
    if kind == "C":
        r.u8()  # flags
        commit_lsn = r.u64()
        return Commit(commit_lsn, r.u64())
    if kind == "R":
        relation = _relation(r)
        relations[relation.oid] = relation
        return relation
    if kind in ("I", "U", "D"):
        return _row_change(kind, r, relations)
    if kind == "T":
        count = r.u32()
        r.u8()  # options
        return Truncate(tuple(r.u32() for _ in range(count)))
    if kind == "M":
        transactional = bool(r.u8() & 1)
        r.u64()  # the message's LSN
        prefix = r.cstring()
        return LogicalMessage(transactional, prefix, r.take(r.u32()))
    if kind in ("O", "Y"):
        return None
    raise ProtocolError(f"unknown message kind {kind!r}")


def lsn_from_text(text: str) -> int:
    """``"0/153B5C8"`` as an integer."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL writes it: ``0/153B5C8``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
