"""The platform database's side of the change stream: its replication slot, read over
plain SQL (psycopg 3 has no streaming replication protocol).

``peek`` decodes from the slot's confirmed position without moving it; ``advance``
moves it once what was read is stored in the event log, so a crash between the two
reads the same changes again (and the consumer's cursor drops them). A heartbeat (a
non-transactional logical message) lets the slot move on while the platform's table is
quiet but the rest of the database is not: the slot would otherwise keep all that WAL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg

from .pgoutput import lsn_from_text, lsn_text

HEARTBEAT_PREFIX = "wedsync.platform_changes.heartbeat"
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class SlotMissing(RuntimeError):
    """The configured replication slot does not exist (dropped, or never created)."""


class SlotLost(RuntimeError):
    """PostgreSQL removed WAL the slot still needed (``max_slot_wal_keep_size``)."""


@dataclass(frozen=True)
class Row:
    """One row of ``pg_logical_slot_peek_binary_changes``: a pgoutput message."""

    lsn: int
    xid: int | None
    data: bytes


@dataclass(frozen=True)
class SlotState:
    confirmed_lsn: int
    lag_bytes: int
    wal_status: str


def check_name(value: str, what: str) -> str:
    """A slot or publication name: what PostgreSQL accepts unquoted, lower case."""
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r}: use 1 to 63 of a-z, 0-9 and _")
    return value


class Source:
    """One connection to the platform database and the slot read through it."""

    def __init__(self, url: str, *, slot: str, publication: str, connect_timeout: int = 5):
        self.url, self.connect_timeout = url, connect_timeout
        self.slot = check_name(slot, "slot")
        self.publication = check_name(publication, "publication")
        self.conn: psycopg.Connection | None = None

    def connect(self) -> None:
        """(Re)connect; the session writes timestamps in ISO form and UTC, which is how
        pgoutput then writes the columns' values."""
        self.close()
        self.conn = psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=self.connect_timeout,
            application_name="wedsync-platform-changes",
            options="-c DateStyle=ISO -c TimeZone=UTC",
        )

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def _execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.conn is None or self.conn.closed:
            self.connect()
        assert self.conn is not None
        return self.conn.execute(sql, params).fetchall()

    def create_slot(self) -> bool:
        """Create the slot (pgoutput) if it does not exist; True when it was created."""
        if self._execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)):
            return False
        self._execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot,))
        return True

    def state(self) -> SlotState:
        """Where the slot stands and how much WAL it keeps; SlotMissing, SlotLost."""
        rows = self._execute(
            "SELECT confirmed_flush_lsn::text,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status"
            " FROM pg_replication_slots WHERE slot_name = %s AND plugin = 'pgoutput'",
            (self.slot,),
        )
        if not rows:
            raise SlotMissing(f"no pgoutput replication slot {self.slot!r}")
        confirmed, lag, status = rows[0]
        if status == "lost" or confirmed is None:
            raise SlotLost(f"replication slot {self.slot!r} lost WAL it needed")
        return SlotState(lsn_from_text(confirmed), int(lag or 0), status or "")

    def peek(self, limit: int) -> list[Row]:
        """The next whole transactions from the slot's confirmed position (a few more
        than ``limit`` messages when the last transaction is long), without consuming."""
        rows = self._execute(
            "SELECT lsn::text, xid::text::bigint, data"
            " FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1',"
            " 'publication_names', %s, 'messages', 'true')",
            (self.slot, limit, self.publication),
        )
        return [Row(lsn_from_text(lsn), xid, bytes(data)) for lsn, xid, data in rows]

    def advance(self, lsn: int) -> None:
        """Confirm everything before ``lsn``: PostgreSQL may recycle that WAL."""
        self._execute(
            "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, lsn_text(lsn))
        )

    def heartbeat(self) -> None:
        """Write a heartbeat message into the WAL: once read back, the slot may advance
        past every transaction before it, relevant or not."""
        self._execute("SELECT pg_logical_emit_message(false, %s, '')", (HEARTBEAT_PREFIX,))
