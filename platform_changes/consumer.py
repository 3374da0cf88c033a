"""The change consumer's loop: read the slot, store each change as its event, advance.

One pass (``Consumer.run_once``) peeks the next whole transactions, stores their changes
of the platform's table in commit order (``services.change_store``, one WedSync
transaction each, deduplicated by the slot's cursor), then advances the slot past what
was stored. ``run_forever`` repeats it, reconnecting to whichever database went away
(a restart, ``pg_terminate_backend``) with a capped backoff: a change is only confirmed
to the platform's database after WedSync committed it, so nothing is lost, and one read
twice is dropped by the cursor. Run by ``manage.py platform_changes`` (one process per
slot; a second one only waits on the slot).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError as DjangoOperationalError
from django.db import connection

from . import metrics, services
from .pgoutput import Begin, Commit, LogicalMessage, RowChange, Truncate, lsn_text, parse
from .source import HEARTBEAT_PREFIX, Source

logger = logging.getLogger(__name__)

# Waits after a lost database: 0.1 s doubling to 5 s, so a restart costs well under a
# second once the server is back and a long outage costs one attempt per 5 s.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0


@dataclass
class Settings:
    table: str  # schema.name of the platform's table
    wedding_column: str
    batch: int
    poll_interval: float
    heartbeat_interval: float
    lag_alert_bytes: int


class Consumer:
    """Reads one slot of the platform database into WedSync's event log."""

    def __init__(self, source: Source, config: Settings) -> None:
        self.source, self.config = source, config
        self.stopping = threading.Event()
        self._user: Any = None
        self._last_heartbeat = 0.0
        self._lag_warned = False

    def stop(self) -> None:
        """Finish the current change and return from ``run_forever`` (SIGTERM)."""
        self.stopping.set()

    def _check_slot(self) -> None:
        state = self.source.state()
        metrics.slot_lag(state.lag_bytes)
        over = state.lag_bytes > self.config.lag_alert_bytes
        if over and not self._lag_warned:
            logger.warning(
                "platform changes: slot %s keeps %d bytes of WAL (alert above %d)",
                self.source.slot,
                state.lag_bytes,
                self.config.lag_alert_bytes,
            )
        self._lag_warned = over

    def _store(self, lsn: int, changes: list[RowChange]) -> None:
        if changes and self._user is None:
            self._user = services.service_user()  # read once per pass that has changes
        for index, row_change in enumerate(changes):
            row = row_change.new if row_change.new is not None else row_change.old
            change = services.Change(self.source.slot, lsn, index, row_change.op, row or {})
            services.change_store(
                change=change, user=self._user, wedding_column=self.config.wedding_column
            )

    def run_once(self) -> int:
        """One pass; returns how many messages the slot gave (0: nothing new)."""
        self._check_slot()
        self._user = None
        rows = self.source.peek(self.config.batch)
        relations: dict = {}
        pending: list[RowChange] = []
        confirm = 0
        for row in rows:
            if self.stopping.is_set():
                break  # SIGTERM: what was stored is confirmed below, the rest read again
            message = parse(row.data, relations)
            if isinstance(message, Begin):
                pending = []
            elif isinstance(message, RowChange):
                relation = relations[message.relation_oid]
                if relation.qualified == self.config.table:
                    pending.append(message)
                else:
                    metrics.change("ignored")
            elif isinstance(message, Truncate):
                logger.warning(
                    "platform changes: a TRUNCATE is not mirrored (at %s)", lsn_text(row.lsn)
                )
            elif isinstance(message, Commit):
                self._store(message.end_lsn, pending)
                pending, confirm = [], max(confirm, message.end_lsn)
            elif isinstance(message, LogicalMessage) and message.prefix == HEARTBEAT_PREFIX:
                # Everything before the heartbeat was decoded above: confirm up to it.
                confirm = max(confirm, row.lsn)
        if confirm:
            self.source.advance(confirm)
            logger.debug("platform changes: slot confirmed up to %s", lsn_text(confirm))
        now = time.monotonic()
        if not rows and now - self._last_heartbeat >= self.config.heartbeat_interval:
            self.source.heartbeat()
            self._last_heartbeat = now
        return len(rows)

    def _lost(self, what: str, exc: Exception, backoff: float) -> float:
        logger.warning("platform changes: %s lost (%s); retrying in %.1f s", what, exc, backoff)
        metrics.reconnect()
        self.stopping.wait(backoff)
        return min(backoff * 2, BACKOFF_MAX)

    def run_forever(self) -> None:
        """Pass after pass until ``stop()``; SlotMissing, SlotLost and a message this
        reader cannot parse end it (the process exits: an operator must look)."""
        backoff = BACKOFF_FIRST
        while not self.stopping.is_set():
            try:
                got = self.run_once()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # A restart, pg_terminate_backend, a network cut; also "slot in use" by a
                # second consumer. Anything else (a privilege missing) ends the process.
                self.source.close()
                backoff = self._lost("the platform database", exc, backoff)
                continue
            except (DjangoOperationalError, DjangoInterfaceError) as exc:
                connection.close()
                backoff = self._lost("WedSync's database", exc, backoff)
                continue
            except services.Retry as exc:
                logger.warning("platform changes: waiting (%s)", exc)
                self.stopping.wait(self.config.poll_interval)
                continue
            backoff = BACKOFF_FIRST
            if got < self.config.batch:
                self.stopping.wait(self.config.poll_interval)
        self.source.close()
