"""The event catalogue of wedding topics (PROTOCOL §5), one table row per event.

A row says what the payload may contain (a msgspec Struct that rejects unknown fields
and wrong types), which role may publish it, what publishing does to the wedding's
rows (the ``weddings.services`` calls, made inside the publish transaction) and what is
stored and broadcast as the event's payload. ``realtime.services.event_publish`` is
the only caller of ``apply``.

Errors name the field: ``RealtimeError("invalid_payload", ..., field="payload.text")``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, Self

import msgspec
import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from msgspec import UNSET, Meta, UnsetType

from realtime.errors import RealtimeError, role_forbidden
from realtime.models import Event
from weddings import roles
from weddings import selectors as wedsync_selectors
from weddings import services as wedsync_services
from weddings.models import TimelineItem, Wedding

# Bigger payloads belong in an upload, not in a live event every subscriber receives.
MAX_PAYLOAD_BYTES = 16 * 1024

Id = Annotated[int, Meta(ge=1, le=2**63 - 1)]
Version = Annotated[int, Meta(ge=1, le=2**31 - 1)]
AwareDateTime = Annotated[dt.datetime, Meta(tz=True)]
Text = Annotated[str, Meta(min_length=1, max_length=4000)]
EmergencyId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")]
ItemStatus = Literal["planned", "in_progress", "done", "delayed", "cancelled"]
VendorStatusName = Literal["en_route", "arrived", "setting_up", "ready", "running_late", "done"]


def invalid(field: str, message: str) -> RealtimeError:
    """The error of a payload that breaks the catalogue, naming the offending field."""
    return RealtimeError("invalid_payload", f"{field}: {message}", field=field)


class Payload(msgspec.Struct, forbid_unknown_fields=True):
    """Base of the payload types: unknown fields are an error."""

    def check(self) -> None:
        """Rules across fields, run after the types are checked."""


# --- payload types ------------------------------------------------------------------------


class TimelineItemCreated(Payload):
    title: str
    starts_at: AwareDateTime
    ends_at: AwareDateTime | None = None
    location: str = ""
    supplier_ids: list[Id] = []
    status: ItemStatus = "planned"
    key_moment: bool = False
    pinned: bool = False


class TimelineItemUpdated(Payload):
    id: Id
    version: Version
    title: str | UnsetType = UNSET
    starts_at: AwareDateTime | UnsetType = UNSET
    ends_at: AwareDateTime | UnsetType | None = UNSET
    location: str | UnsetType = UNSET
    supplier_ids: list[Id] | UnsetType = UNSET
    status: ItemStatus | UnsetType = UNSET
    key_moment: bool | UnsetType = UNSET
    pinned: bool | UnsetType = UNSET

    def changes(self) -> dict[str, Any]:
        values = msgspec.structs.asdict(self)
        return {
            name: value
            for name, value in values.items()
            if value is not UNSET and name not in {"id", "version"}
        }

    def check(self) -> None:
        if not self.changes():
            raise invalid("payload", "name at least one field to change")


class TimelineItemDeleted(Payload):
    id: Id
    version: Version


class TimelineShifted(Payload):
    from_item_id: Id
    minutes: Annotated[
        int, Meta(ge=-wedsync_services.MAX_SHIFT_MINUTES, le=wedsync_services.MAX_SHIFT_MINUTES)
    ]
    # Optional optimistic guard of the origin item, as for the other timeline writes.
    version: Version | UnsetType = UNSET

    def check(self) -> None:
        if self.minutes == 0:
            raise invalid("payload.minutes", "must not be 0")


class VendorStatus(Payload):
    supplier_id: Id
    status: VendorStatusName
    minutes_late: Annotated[int, Meta(ge=0, le=600)] | UnsetType = UNSET
    note: Annotated[str, Meta(max_length=500)] | UnsetType = UNSET

    def check(self) -> None:
        if self.status == "running_late" and self.minutes_late is UNSET:
            raise invalid("payload.minutes_late", "required when status is running_late")
        if self.status != "running_late" and self.minutes_late is not UNSET:
            raise invalid("payload.minutes_late", "only allowed when status is running_late")


class MessagePosted(Payload):
    text: Text

    def check(self) -> None:
        if not self.text.strip():
            raise invalid("payload.text", "must not be blank")


class EmergencyRaised(Payload):
    kind: Annotated[str, Meta(min_length=1, max_length=40)]
    text: Text
    # Made by the server when missing; a client's own is kept only if unused on the topic.
    id: EmergencyId | UnsetType = UNSET

    def check(self) -> None:
        if not self.kind.strip():
            raise invalid("payload.kind", "must not be blank")
        if not self.text.strip():
            raise invalid("payload.text", "must not be blank")


class EmergencyResolved(Payload):
    id: EmergencyId
    text: Text | UnsetType = UNSET


class WeddingUpdated(Payload):
    guest_count: Annotated[int, Meta(ge=0, le=100_000)] | UnsetType = UNSET
    venue: Annotated[str, Meta(max_length=200)] | UnsetType = UNSET
    notes: Annotated[str, Meta(max_length=4000)] | UnsetType = UNSET

    def check(self) -> None:
        if not msgspec.to_builtins(self):
            raise invalid("payload", "name at least one of guest_count, venue, notes")


# --- who may publish: the role matrix (weddings.roles), rows ``publish.<event>`` ----------


@dataclass
class PublishContext:
    """The publisher and the wedding of one publish; the supplier sets are read once."""

    user: Any
    wedding_id: int

    @classmethod
    def known(cls, user: Any, wedding_id: int, acting_supplier_ids: frozenset[int]) -> Self:
        """A context whose acting suppliers were already read (``publish_access``)."""
        ctx = cls(user=user, wedding_id=wedding_id)
        ctx.__dict__["acting_supplier_ids"] = set(acting_supplier_ids)  # the cached_property
        return ctx

    @cached_property
    def booked_supplier_ids(self) -> set[int]:
        return wedsync_selectors.active_supplier_ids(self.wedding_id)

    @cached_property
    def user_supplier_ids(self) -> set[int]:
        return wedsync_selectors.user_supplier_ids(self.user)

    def is_editor(self) -> bool:
        """Whether the user is a planner or coordinator of the wedding (a query)."""
        return wedsync_selectors.user_can_edit_timeline(self.user, self.wedding_id)

    @cached_property
    def acting_supplier_ids(self) -> set[int]:
        """The user's suppliers that are actively booked on this wedding (one query, or
        none when both sets were already read)."""
        if "user_supplier_ids" in self.__dict__ and "booked_supplier_ids" in self.__dict__:
            return self.user_supplier_ids & self.booked_supplier_ids
        return wedsync_selectors.user_acting_supplier_ids(self.user, self.wedding_id)


# --- effects ------------------------------------------------------------------------------


def _domain_call(call: Callable[..., Any], *, id_field: str, **kwargs: Any) -> Any:
    """Call a wedsync service and turn its errors into protocol errors."""
    try:
        return call(**kwargs)
    except wedsync_services.Conflict as exc:
        raise RealtimeError(
            "conflict",
            f"timeline item {exc.current.pk} is at version {exc.current.version}",
            current=wedsync_selectors.timeline_item_as_dict(exc.current),
        ) from exc
    except TimelineItem.DoesNotExist as exc:
        raise invalid(id_field, "no such timeline item on this wedding") from exc
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            name, messages = next(iter(exc.message_dict.items()))
            field = "payload.version" if name == "expected_version" else f"payload.{name}"
            raise invalid(field, " ".join(messages)) from exc
        raise invalid("payload", " ".join(exc.messages)) from exc


# The item services are given the topic's wedding: an item of another wedding must not
# be reachable through this one, and is missing to them (``DoesNotExist``), reported
# exactly like a missing item (``_domain_call``), in the query that locks it.


def _apply_item_created(ctx: PublishContext, data: TimelineItemCreated) -> dict[str, Any]:
    item = _domain_call(
        wedsync_services.timeline_item_create,
        id_field="payload",
        wedding_id=ctx.wedding_id,
        **msgspec.structs.asdict(data),
    )
    return wedsync_selectors.timeline_item_as_dict(item)


def _apply_item_updated(ctx: PublishContext, data: TimelineItemUpdated) -> dict[str, Any]:
    item = _domain_call(
        wedsync_services.timeline_item_update,
        id_field="payload.id",
        wedding_id=ctx.wedding_id,
        item_id=data.id,
        expected_version=data.version,
        **data.changes(),
    )
    return wedsync_selectors.timeline_item_as_dict(item)


def _apply_item_deleted(ctx: PublishContext, data: TimelineItemDeleted) -> dict[str, Any]:
    item = _domain_call(
        wedsync_services.timeline_item_delete,
        id_field="payload.id",
        wedding_id=ctx.wedding_id,
        item_id=data.id,
        expected_version=data.version,
    )
    return {**wedsync_selectors.timeline_item_as_dict(item), "id": data.id}


def _apply_shifted(ctx: PublishContext, data: TimelineShifted) -> dict[str, Any]:
    moved = _domain_call(
        wedsync_services.timeline_shift,
        id_field="payload.from_item_id",
        wedding_id=ctx.wedding_id,
        item_id=data.from_item_id,
        minutes=data.minutes,
        expected_version=None if data.version is UNSET else data.version,
    )
    items = [wedsync_selectors.timeline_item_as_dict(item) for item in moved]
    return {
        "from_item_id": data.from_item_id,
        "minutes": data.minutes,
        "items": items,
        # The suppliers expected to acknowledge: those with a moved item.
        "ack_suppliers": sorted({sid for item in items for sid in item["supplier_ids"]}),
    }


def _apply_vendor_status(ctx: PublishContext, data: VendorStatus) -> dict[str, Any]:
    if data.supplier_id in ctx.acting_supplier_ids:
        # The publisher's own supplier, booked here (read with the access check): allowed
        # to every role that may publish a status, with no further query.
        return msgspec.to_builtins(data)
    any_supplier = roles.may(
        "status.any_supplier", staff=ctx.user.is_staff, acting=True, editor=ctx.is_editor
    )
    if not any_supplier and data.supplier_id not in ctx.user_supplier_ids:
        raise role_forbidden(
            "you may post the status of your own supplier only",
            field="payload.supplier_id",
        )
    if data.supplier_id not in ctx.booked_supplier_ids:
        raise invalid("payload.supplier_id", "that supplier is not booked on this wedding")
    return msgspec.to_builtins(data)


_EMERGENCY_EVENTS = ("emergency.raised", "emergency.resolved")


def _emergency_events(ctx: PublishContext, emergency_id: str) -> Any:
    """The wedding topic's ``emergency.*`` events naming ``emergency_id``. Read under the
    topic's lock (emergencies take the general publish path, never the one-statement one),
    so no other publish of the topic can add one between this read and the store."""
    return Event.objects.filter(
        topic=f"wedding:{ctx.wedding_id}", event__in=_EMERGENCY_EVENTS, payload__id=emergency_id
    ).order_by()


def _open_emergencies_of(ctx: PublishContext) -> int:
    """How many emergencies the publisher raised on this wedding that are still open.
    Read under the topic's lock, like the ids (``_emergency_events``)."""
    topic = f"wedding:{ctx.wedding_id}"
    raised = set(
        Event.objects.filter(topic=topic, event="emergency.raised", actor_user_id=ctx.user.pk)
        .order_by()
        .values_list("payload__id", flat=True)
    )
    if not raised:
        return 0
    resolved = set(
        Event.objects.filter(topic=topic, event="emergency.resolved", payload__id__in=raised)
        .order_by()
        .values_list("payload__id", flat=True)
    )
    return len(raised - resolved)


def _apply_emergency_raised(ctx: PublishContext, data: EmergencyRaised) -> dict[str, Any]:
    # Open emergencies are never pruned and each is chased by the overdue check: a member
    # holds at most a few open at once (staff: any number).
    cap = settings.REALTIME_OPEN_EMERGENCIES_PER_USER
    if not ctx.user.is_staff and _open_emergencies_of(ctx) >= cap:
        raise RealtimeError(
            "limit_reached",
            f"you have {cap} open emergencies on this wedding: resolve one first",
            field="event",
        )
    # The server makes the id. A v1 client's own id is kept only when no emergency of the
    # topic (raised or resolved, still in the log) has used it: an id names one emergency.
    if data.id is UNSET:
        emergency_id = uuid.uuid4().hex
    elif _emergency_events(ctx, data.id).exists():
        raise invalid("payload.id", "already used by an emergency on this wedding")
    else:
        emergency_id = data.id
    return {"id": emergency_id, "kind": data.kind, "text": data.text}


def _may_resolve(ctx: PublishContext, raiser_id: int | None) -> bool:
    """The raiser may resolve their emergency (``publish.emergency.resolved``, checked
    before), and whoever the matrix lets resolve anyone's (``emergency.resolve_any``)."""
    if raiser_id is not None and raiser_id == ctx.user.pk:
        return True
    return roles.may(
        "emergency.resolve_any",
        staff=ctx.user.is_staff,
        acting=bool(ctx.acting_supplier_ids),
        editor=ctx.is_editor,
    )


def _apply_emergency_resolved(ctx: PublishContext, data: EmergencyResolved) -> dict[str, Any]:
    rows = list(
        _emergency_events(ctx, data.id).order_by("seq").values_list("event", "actor_user_id")
    )
    if not rows or any(event == "emergency.resolved" for event, _ in rows):
        raise invalid("payload.id", "no open emergency with this id on this wedding")
    if not _may_resolve(ctx, rows[0][1]):
        raise role_forbidden(
            "only whoever raised this emergency, the wedding's planner or coordinator,"
            " or staff may resolve it",
            field="payload.id",
        )
    return msgspec.to_builtins(data)


def _apply_wedding_updated(ctx: PublishContext, data: WeddingUpdated) -> dict[str, Any]:
    changes = msgspec.to_builtins(data)
    wedding = Wedding.objects.select_for_update().get(pk=ctx.wedding_id)
    columns = {"guest_count": "guest_count", "venue": "venue_name", "notes": "notes"}
    for name, value in changes.items():
        setattr(wedding, columns[name], value)
    wedding.save(update_fields=[*(columns[name] for name in changes), "updated_at"])
    return changes


def _as_stored(ctx: PublishContext, data: Payload) -> dict[str, Any]:
    return msgspec.to_builtins(data)


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventSpec:
    """One catalogue row: payload type, effect, priority, acknowledgement. Who may
    publish it is the matrix's row ``publish.<name>`` (``weddings.roles``)."""

    name: str
    payload_type: type[Payload]
    apply: Callable[[PublishContext, Any], dict[str, Any]]
    priority: str = "normal"
    ack_required: bool = False
    # True when ``apply`` writes nothing to the database (it may read): the event is then
    # stored with one statement, without holding the topic's lock around ``apply``
    # (services._append_one_statement). Left False, the conservative default.
    stores_only: bool = False

    def validate(self, payload: Any) -> Payload:
        """Check a client payload against this event's type; raise ``invalid_payload``."""
        return validate_payload(self.payload_type, payload)


CATALOGUE: dict[str, EventSpec] = {
    spec.name: spec
    for spec in (
        EventSpec("timeline.item.created", TimelineItemCreated, _apply_item_created),
        EventSpec("timeline.item.updated", TimelineItemUpdated, _apply_item_updated),
        EventSpec("timeline.item.deleted", TimelineItemDeleted, _apply_item_deleted),
        EventSpec("timeline.shifted", TimelineShifted, _apply_shifted, ack_required=True),
        EventSpec("vendor.status", VendorStatus, _apply_vendor_status, stores_only=True),
        EventSpec("message.posted", MessagePosted, _as_stored, stores_only=True),
        EventSpec(
            "emergency.raised",
            EmergencyRaised,
            _apply_emergency_raised,
            priority="critical",
            ack_required=True,
        ),
        EventSpec(
            "emergency.resolved",
            EmergencyResolved,
            _apply_emergency_resolved,
            priority="critical",
        ),
        EventSpec("wedding.updated", WeddingUpdated, _apply_wedding_updated),
    )
}


def spec_for(event: Any) -> EventSpec:
    """The catalogue row of an event name; ``invalid_payload`` (field ``event``) if none."""
    spec = CATALOGUE.get(event) if isinstance(event, str) else None
    if spec is None:
        shown = event[:64] if isinstance(event, str) else event
        raise invalid("event", f"unknown event {shown!r}")
    return spec


_ERROR_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_ERROR_FIELD = re.compile(r"(?:unknown|missing required) field `(?P<name>[^`]{0,64})")


def _field_of(error: msgspec.ValidationError) -> tuple[str, str]:
    """``("payload.text", "Expected `str`, got `int`")`` from a msgspec error."""
    message = str(error)
    path = ""
    if match := _ERROR_PATH.search(message):
        path = match["path"]
        message = message[: match.start()]
    if match := _ERROR_FIELD.search(message):
        path += f".{match['name']}"
    return f"payload{path}", message


def validate_payload(payload_type: type[Payload], payload: Any) -> Payload:
    """Check a payload: a JSON object of at most 16 KiB matching ``payload_type``."""
    if not isinstance(payload, dict):
        raise invalid("payload", "must be a JSON object")
    try:
        size = len(orjson.dumps(payload))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise invalid("payload", "must be plain JSON") from exc
    if size > MAX_PAYLOAD_BYTES:
        raise invalid("payload", f"larger than {MAX_PAYLOAD_BYTES // 1024} KiB")
    try:
        data = msgspec.convert(payload, payload_type, strict=True)
    except msgspec.ValidationError as exc:
        field, message = _field_of(exc)
        raise invalid(field, message) from exc
    data.check()
    return data
