"""Every write of the wedding domain: timeline items, bookings and guests.

Each service runs in ``transaction.atomic`` and may be called inside an outer
transaction (the realtime event log wraps them in its own): it neither commits nor
broadcasts, and returns plain model instances, with ``suppliers`` prefetched so that
``weddings.selectors.timeline_item_as_dict`` needs no further query.

Errors: invalid input raises ``ValidationError`` whose ``message_dict`` names the
field; a stale ``expected_version`` raises ``Conflict`` carrying the current item; an
id that names no row raises that model's ``DoesNotExist``. In every case nothing is
stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from weddings.models import MAX_GUESTS_PER_WEDDING, Guest, TimelineItem, Wedding
from weddings.selectors import active_supplier_ids, load_supplier_ids

# A shift is a delay or a gain on the day; more than a day either way is a new plan.
MAX_SHIFT_MINUTES = 24 * 60

TITLE_MAX_LENGTH = TimelineItem._meta.get_field("title").max_length
LOCATION_MAX_LENGTH = TimelineItem._meta.get_field("location").max_length

# What `timeline_item_update` may change (PROTOCOL §5 item fields, less id and version).
UPDATABLE_FIELDS = frozenset(
    {"title", "starts_at", "ends_at", "location", "supplier_ids", "status", "key_moment", "pinned"}
)


class Conflict(Exception):
    """A timeline write named a stale version; ``current`` is the item as it is now."""

    def __init__(self, *, current: TimelineItem) -> None:
        super().__init__(f"timeline item {current.pk} is at version {current.version}")
        self.current = current


def _validated(*, wedding_id: int, values: dict[str, Any], changed: set[str]) -> dict[str, Any]:
    """Check the ``changed`` item fields of ``values``; return them normalised."""
    errors: dict[str, list[str]] = {}
    cleaned = dict(values)
    for name, max_length, required in (
        ("title", TITLE_MAX_LENGTH, True),
        ("location", LOCATION_MAX_LENGTH, False),
    ):
        if name in changed:
            _clean_text(name, values[name], max_length, required, cleaned, errors)
    _check_times(values, changed, errors)
    if "status" in changed and values["status"] not in TimelineItem.Status.values:
        errors["status"] = [f"One of: {', '.join(TimelineItem.Status.values)}."]
    for name in ("key_moment", "pinned"):
        if name in changed and not isinstance(values[name], bool):
            errors[name] = ["Must be true or false."]
    if "supplier_ids" in changed:
        _clean_supplier_ids(wedding_id, values["supplier_ids"], cleaned, errors)
    if errors:
        raise ValidationError(errors)
    return cleaned


def _clean_text(
    name: str, value: Any, max_length: int, required: bool,
    cleaned: dict[str, Any], errors: dict[str, list[str]],
) -> None:  # fmt: skip
    """A text field: stripped, at most ``max_length``; blank only when not ``required``."""
    if not isinstance(value, str) or (required and not value.strip()):
        errors[name] = ["Enter a title."] if required else ["Enter text."]
    elif len(value.strip()) > max_length:
        errors[name] = [f"At most {max_length} characters."]
    else:
        cleaned[name] = value.strip()


def _check_times(values: dict[str, Any], changed: set[str], errors: dict[str, list[str]]) -> None:
    """``starts_at``/``ends_at``: aware datetimes (``ends_at`` may be None), end not first."""
    for name in ("starts_at", "ends_at"):
        value = values[name]
        if name not in changed or (name == "ends_at" and value is None):
            continue
        if not isinstance(value, dt.datetime):
            errors[name] = ["Enter a date and time."]
        elif timezone.is_naive(value):
            errors[name] = ["Give the time zone (an aware datetime)."]
    if (
        changed & {"starts_at", "ends_at"}
        and not errors.keys() & {"starts_at", "ends_at"}
        and values["ends_at"] is not None
        and values["ends_at"] < values["starts_at"]
    ):
        # Named after the field the caller changed, ends_at when both were.
        name = "ends_at" if "ends_at" in changed else "starts_at"
        errors[name] = ["The end must not be before the start."]


def _clean_supplier_ids(
    wedding_id: int, ids: Any, cleaned: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    """A collection of ids of suppliers with an active booking on the wedding."""
    if isinstance(ids, str | bytes | dict) or not isinstance(ids, Iterable):
        ids = [None]  # reported below, like a list with a bad element
    ids = list(ids)  # once: it may be a generator
    if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        errors["supplier_ids"] = ["Must be a list of supplier ids."]
        return
    ids = set(ids)
    unbooked = ids - active_supplier_ids(wedding_id)
    if unbooked:
        errors["supplier_ids"] = [
            "No active booking on this wedding for supplier(s) "
            + ", ".join(str(i) for i in sorted(unbooked))
            + "."
        ]
    cleaned["supplier_ids"] = ids


def _check_version_argument(expected_version: Any) -> None:
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise ValidationError({"expected_version": ["Must be the item's version (an integer)."]})


def _locked_item(
    *, item_id: int, expected_version: int, wedding_id: int | None = None
) -> TimelineItem:
    """Lock the item's row for this transaction; raise Conflict if its version moved on.
    With ``wedding_id``, an item of another wedding is missing (``DoesNotExist``)."""
    _check_version_argument(expected_version)
    items = TimelineItem.objects.select_for_update().filter(pk=item_id)
    if wedding_id is not None:
        items = items.filter(wedding_id=wedding_id)
    item = items.get()
    if item.version != expected_version:
        load_supplier_ids([item])
        raise Conflict(current=item)
    return item


@transaction.atomic
def timeline_item_create(
    *,
    wedding_id: int,
    title: str,
    starts_at: dt.datetime,
    ends_at: dt.datetime | None = None,
    location: str = "",
    supplier_ids: Iterable[int] = (),
    status: str = TimelineItem.Status.PLANNED,
    key_moment: bool = False,
    pinned: bool = False,
) -> TimelineItem:
    """Add an item (version 1) to a wedding's timeline; suppliers must be actively booked."""
    if not Wedding.objects.filter(pk=wedding_id).exists():
        raise Wedding.DoesNotExist(f"no wedding {wedding_id}")
    values = {
        "title": title,
        "starts_at": starts_at,
        "ends_at": ends_at,
        "location": location,
        "supplier_ids": supplier_ids,
        "status": status,
        "key_moment": key_moment,
        "pinned": pinned,
    }
    cleaned = _validated(wedding_id=wedding_id, values=values, changed=set(values))
    supplier_set = cleaned.pop("supplier_ids")
    item = TimelineItem.objects.create(wedding_id=wedding_id, version=1, **cleaned)
    if supplier_set:
        item.suppliers.set(supplier_set)
    load_supplier_ids([item])
    return item


@transaction.atomic
def timeline_item_update(
    *, item_id: int, expected_version: int, wedding_id: int | None = None, **changes: Any
) -> TimelineItem:
    """Change some fields of an item at ``expected_version`` and bump its version by one.
    With ``wedding_id``, an item of another wedding is missing (``DoesNotExist``)."""
    unknown = sorted(set(changes) - UPDATABLE_FIELDS)
    if unknown:
        raise ValidationError({name: ["Not a field that can be changed."] for name in unknown})
    item = _locked_item(item_id=item_id, expected_version=expected_version, wedding_id=wedding_id)
    current = {name: getattr(item, name) for name in UPDATABLE_FIELDS - {"supplier_ids"}}
    current["supplier_ids"] = ()
    cleaned = _validated(wedding_id=item.wedding_id, values=current | changes, changed=set(changes))
    for name in changes.keys() - {"supplier_ids"}:
        setattr(item, name, cleaned[name])
    item.version += 1
    item.save(update_fields=[*(changes.keys() - {"supplier_ids"}), "version", "updated_at"])
    if "supplier_ids" in changes:
        item.suppliers.set(cleaned["supplier_ids"])
    load_supplier_ids([item])
    return item


@transaction.atomic
def timeline_item_delete(
    *, item_id: int, expected_version: int, wedding_id: int | None = None
) -> TimelineItem:
    """Delete an item at ``expected_version``; return it as it was (id and version kept).
    With ``wedding_id``, an item of another wedding is missing (``DoesNotExist``)."""
    item = _locked_item(item_id=item_id, expected_version=expected_version, wedding_id=wedding_id)
    load_supplier_ids([item])  # read before the links go with the row
    pk = item.pk
    item.delete()
    item.pk = pk  # Model.delete() clears it; callers announce the deleted id
    return item


@transaction.atomic
def timeline_shift(
    *,
    item_id: int,
    minutes: int,
    expected_version: int | None = None,
    wedding_id: int | None = None,
) -> list[TimelineItem]:
    """Move an item and every later unpinned item of its wedding by ``minutes``.

    "Later" means ``starts_at`` at or after the origin's, so items starting at the same
    time move too. Pinned items (a fixed clock time such as a sunset slot) never move,
    and that includes the origin itself: shifting from a pinned item moves only the
    unpinned items from its start on. Each moved item's ``starts_at``, ``ends_at`` and
    ``version`` change; nothing else does. ``expected_version``, when given, guards the
    origin (``Conflict`` if stale). Returns the moved items in timeline order. With
    ``wedding_id``, an item of another wedding is missing (``DoesNotExist``).
    """
    if (
        isinstance(minutes, bool)
        or not isinstance(minutes, int)
        or minutes == 0
        or abs(minutes) > MAX_SHIFT_MINUTES
    ):
        limit = MAX_SHIFT_MINUTES
        raise ValidationError({"minutes": [f"A non-zero whole number from -{limit} to {limit}."]})
    if expected_version is not None:
        _check_version_argument(expected_version)
    if wedding_id is None:
        wedding_id = TimelineItem.objects.values_list("wedding_id", flat=True).get(pk=item_id)
    # Always lock in id order, whoever shifts, so that two shifts cannot deadlock.
    items = list(
        TimelineItem.objects.select_for_update().filter(wedding_id=wedding_id).order_by("id")
    )
    origin = next((item for item in items if item.pk == item_id), None)
    if origin is None:  # deleted (or moved to another wedding) before we locked
        raise TimelineItem.DoesNotExist(f"no timeline item {item_id}")
    if expected_version is not None and origin.version != expected_version:
        load_supplier_ids([origin])
        raise Conflict(current=origin)

    delta = dt.timedelta(minutes=minutes)
    now = timezone.now()
    moved = [item for item in items if not item.pinned and item.starts_at >= origin.starts_at]
    for item in moved:
        item.starts_at += delta
        if item.ends_at is not None:
            item.ends_at += delta
        item.version += 1
        item.updated_at = now  # update() does not apply auto_now
    if moved:
        # Every moved item moves by the same delta: one UPDATE computed by the database,
        # not bulk_update's CASE per item (whose expression tree cost 25-50 ms of Python,
        # holding the GIL, for a 14-item timeline). NULL ends_at stays NULL.
        TimelineItem.objects.filter(pk__in=[item.pk for item in moved]).update(
            starts_at=F("starts_at") + delta,
            ends_at=F("ends_at") + delta,
            version=F("version") + 1,
            updated_at=now,
        )
    moved.sort(key=lambda item: (item.starts_at, item.pk))
    load_supplier_ids(moved)
    return moved


# --- guests (ADR 0026) ------------------------------------------------------------------

GUEST_FIELDS = frozenset({"name", "rsvp", "diet", "dietary_note", "table"})
_GUEST_TEXT = {  # field: (max length, required)
    "name": (Guest._meta.get_field("name").max_length, True),
    "dietary_note": (Guest._meta.get_field("dietary_note").max_length, False),
    "table": (Guest._meta.get_field("table").max_length, False),
}
_GUEST_CHOICES = {"rsvp": Guest.Rsvp.values, "diet": Guest.Diet.values}


def _guest_validated(values: dict[str, Any]) -> dict[str, Any]:
    """Check guest fields (any of ``GUEST_FIELDS``); return them stripped."""
    errors: dict[str, list[str]] = {}
    cleaned = dict(values)
    for name in sorted(values.keys() - GUEST_FIELDS):
        errors[name] = ["Not a field of a guest."]
    for name, (max_length, required) in _GUEST_TEXT.items():
        value = values.get(name, "")
        if name not in values:
            continue
        if not isinstance(value, str) or (required and not value.strip()):
            errors[name] = ["Enter the guest's name."] if required else ["Enter text."]
        elif len(value.strip()) > max_length:
            errors[name] = [f"At most {max_length} characters."]
        else:
            cleaned[name] = value.strip()
    for name, choices in _GUEST_CHOICES.items():
        if name in values and values[name] not in choices:
            errors[name] = [f"One of: {', '.join(choices)}."]
    if errors:
        raise ValidationError(errors)
    return cleaned


@transaction.atomic
def guest_create(
    *,
    wedding_id: int,
    name: str,
    rsvp: str = Guest.Rsvp.PENDING,
    diet: str = Guest.Diet.NONE,
    dietary_note: str = "",
    table: str = "",
) -> Guest:
    """Add a guest to a wedding; refused (``ValidationError`` on ``wedding``) when it has
    ``MAX_GUESTS_PER_WEDDING`` already. The wedding's row is locked while the guests are
    counted, so two concurrent adds cannot both take the last place."""
    cleaned = _guest_validated(
        {"name": name, "rsvp": rsvp, "diet": diet, "dietary_note": dietary_note, "table": table}
    )
    if not Wedding.objects.select_for_update().filter(pk=wedding_id).exists():
        raise Wedding.DoesNotExist(f"no wedding {wedding_id}")
    count = Guest.objects.filter(wedding_id=wedding_id).count()
    if count >= MAX_GUESTS_PER_WEDDING:
        raise ValidationError(
            {"wedding": [f"This wedding has {count} guests, the most one wedding may have "
                         f"({MAX_GUESTS_PER_WEDDING})."]}
        )  # fmt: skip
    return Guest.objects.create(wedding_id=wedding_id, **cleaned)


@transaction.atomic
def guest_update(*, guest_id: int, **changes: Any) -> Guest:
    """Change some fields of a guest (RSVP, diet, note, table, name)."""
    cleaned = _guest_validated(changes)
    guest = Guest.objects.select_for_update().get(pk=guest_id)
    for name, value in cleaned.items():
        setattr(guest, name, value)
    guest.save()
    return guest


@transaction.atomic
def guest_delete(*, guest_id: int) -> None:
    """Remove a guest from their wedding's list."""
    Guest.objects.get(pk=guest_id).delete()
