"""Writes of the change consumer: one platform row change becomes one WedSync event.

``change_store`` runs in ONE transaction of WedSync's database: it locks the slot's
``ChangeCursor``, drops a change at or before it (read again after a crash), publishes
through ``realtime.services.event_publish`` (the catalogue's validation and effects, the
role matrix, the topic's seq, the broadcast on commit, exactly as any publish) and moves
the cursor. The event and the cursor commit together or not at all (ADR 0027).

The publisher is the service user ``platform-changes``, acting as staff's column of the
role matrix, as an API key's service user does (ADR 0024). A change that cannot become
an event (an unknown wedding, a field the catalogue refuses) is a ``RejectedChange`` row,
a warning in the log and a metric; the stream goes on. A transient failure (read-only
mode, a lost database) raises ``Retry`` with nothing stored.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db import DataError, IntegrityError, transaction
from django.utils import timezone

from realtime.errors import RealtimeError
from realtime.services import event_publish
from weddings.models import TimelineItem

from . import metrics
from .models import ChangeCursor, RejectedChange, TimelineLink
from .pgoutput import UNCHANGED

logger = logging.getLogger(__name__)

SERVICE_USERNAME = "platform-changes"
# The platform columns mirrored into a timeline item, by the catalogue's field names.
FIELDS = ("title", "starts_at", "ends_at", "location", "status", "key_moment", "pinned")
# A conflict (a WedSync user edited the item between our read and our write) is retried
# with the item's new version: the platform's row is the newer truth.
CONFLICT_RETRIES = 3


class Retry(Exception):
    """A transient failure: nothing was stored, the change must be tried again later."""


class Rejected(Exception):
    """A change that can never become an event; ``code`` names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Change:
    """One row change of the platform's table, at its place in the stream."""

    slot: str
    lsn: int  # the end LSN of its transaction's commit
    index: int  # its place in that transaction
    op: str  # "insert" | "update" | "delete"
    row: dict[str, object]  # the new row, or the key of a deleted one

    @property
    def idempotency_key(self) -> str:
        return f"pgc-{self.lsn:x}-{self.index}"


def service_user() -> Any:
    """The user the platform's changes are published as (created on first use)."""
    user, created = get_user_model()._default_manager.get_or_create(
        username=SERVICE_USERNAME, defaults={"first_name": "Platform"}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    if not user.is_active:
        # Every publish would be refused as if the wedding did not exist: wait instead.
        raise Retry(f"the service user {SERVICE_USERNAME!r} is deactivated")
    acting = copy.copy(user)
    acting.is_staff = True  # in memory only: staff's column of the matrix, as API keys
    return acting


def _int(row: dict[str, object], column: str) -> int:
    value = row.get(column)
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Rejected("invalid_row", f"{column}: not an integer: {str(value)[:40]!r}") from None
    if not 1 <= number < 2**63:
        raise Rejected("invalid_row", f"{column}: out of range")
    return number


def _value(name: str, value: object) -> object:
    """A column's text (PostgreSQL's output form, ISO dates in UTC) as the catalogue's
    JSON value; what cannot be converted is passed on for the catalogue to refuse."""
    if value is None:
        return "" if name == "location" else None
    if name in ("starts_at", "ends_at") and isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value).isoformat()
        except ValueError:
            return value
    if name in ("key_moment", "pinned") and value in ("t", "f"):
        return value == "t"
    return value


def _fields(row: dict[str, object]) -> dict[str, object]:
    return {
        name: _value(name, row[name])
        for name in FIELDS
        if name in row and row[name] is not UNCHANGED
    }


def _publish(change: Change, user: Any, event: str, wedding_id: int, payload: dict) -> Any:
    return event_publish(
        topic=f"wedding:{wedding_id}",
        event=event,
        payload=payload,
        user=user,
        idempotency_key=change.idempotency_key,
    )


def _created(change: Change, user: Any, wedding_id: int) -> str:
    platform_id = _int(change.row, "id")
    result = _publish(change, user, "timeline.item.created", wedding_id, _fields(change.row))
    if result.created:
        TimelineLink.objects.create(platform_id=platform_id, item_id=result.event.payload["id"])
    return "published" if result.created else "duplicate"


def _updated(change: Change, user: Any, wedding_id: int, link: TimelineLink) -> str:
    for attempt in range(CONFLICT_RETRIES):
        item = TimelineItem.objects.filter(pk=link.item_id).values("wedding_id", "version").get()
        if item["wedding_id"] != wedding_id:
            raise Rejected("wedding_changed", "a row may not move to another wedding")
        payload = {"id": link.item_id, "version": item["version"], **_fields(change.row)}
        try:
            with transaction.atomic():
                result = _publish(change, user, "timeline.item.updated", wedding_id, payload)
            return "published" if result.created else "duplicate"
        except RealtimeError as exc:
            if exc.code != "conflict" or attempt == CONFLICT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _deleted(change: Change, user: Any, link: TimelineLink | None) -> str:
    if link is None:
        return "ignored"  # never became an item (rejected), or deleted in WedSync since
    item = TimelineItem.objects.filter(pk=link.item_id).values("wedding_id", "version").get()
    payload = {"id": link.item_id, "version": item["version"]}
    result = _publish(change, user, "timeline.item.deleted", item["wedding_id"], payload)
    return "published" if result.created else "duplicate"


def _apply(change: Change, user: Any, wedding_column: str) -> str:
    """Publish the change's event; Rejected or RealtimeError when it cannot be one."""
    link = None
    if "id" in change.row:
        link = TimelineLink.objects.filter(platform_id=_int(change.row, "id")).first()
    if change.op == "delete":
        return _deleted(change, user, link)
    wedding_id = _int(change.row, wedding_column)
    if link is None:  # an insert, or an update of a row that has no item yet
        return _created(change, user, wedding_id)
    return _updated(change, user, wedding_id, link)


def _reject(change: Change, code: str, message: str, wedding_column: str) -> None:
    platform_id, wedding_id = change.row.get("id"), change.row.get(wedding_column)
    RejectedChange.objects.create(
        slot=change.slot,
        lsn=change.lsn,
        index=change.index,
        op=change.op,
        platform_id=int(platform_id) if str(platform_id).isdigit() else None,
        wedding_id=int(wedding_id) if str(wedding_id).isdigit() else None,
        code=code[:32],
        message=message[:500],
    )
    logger.warning(
        "platform change rejected: %s of row %s (wedding %s) at %x:%d: %s: %s",
        change.op,
        platform_id,
        wedding_id,
        change.lsn,
        change.index,
        code,
        message,
    )


def change_store(*, change: Change, user: Any, wedding_column: str) -> str:
    """Store one change as its event (or its rejection) and move the slot's cursor past
    it, in one transaction; returns the outcome: published, duplicate (at or before the
    cursor, or its idempotency key taken), ignored or rejected. Raises ``Retry``."""
    with transaction.atomic():
        cursor, _ = ChangeCursor.objects.select_for_update().get_or_create(slot=change.slot)
        if (cursor.lsn, cursor.index) >= (change.lsn, change.index):
            outcome = "duplicate"
        else:
            try:
                with transaction.atomic():  # a refused publish leaves nothing behind
                    outcome = _apply(change, user, wedding_column)
            except RealtimeError as exc:
                if exc.code == "unavailable":
                    raise Retry(exc.message) from exc
                # Staff sees every wedding: "forbidden" on the topic means there is none.
                code = "unknown_wedding" if exc.code == "forbidden" else exc.code
                _reject(change, code, exc.message, wedding_column)
                outcome = "rejected"
            except Rejected as exc:
                _reject(change, exc.code, exc.message, wedding_column)
                outcome = "rejected"
            except (IntegrityError, DataError) as exc:
                # A value the checks above let through and the database refused: a
                # rejection too, never a change the stream stops on for ever.
                _reject(change, "invalid_row", str(exc).splitlines()[0], wedding_column)
                outcome = "rejected"
            ChangeCursor.objects.filter(pk=cursor.pk).update(
                lsn=change.lsn, index=change.index, updated_at=timezone.now()
            )
    metrics.change(outcome)
    return outcome


def cursor_position(slot: str) -> tuple[int, int]:
    """The slot's (commit end LSN, index) last stored; (0, -1) before the first."""
    row = ChangeCursor.objects.filter(slot=slot).values_list("lsn", "index").first()
    return row or (0, -1)
