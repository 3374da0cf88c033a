"""Reads of the web app: the weddings of "My Saturday" and the state of a live wedding page.

Every function takes the user who asks and returns only what that user may see. A
wedding the user may not see and one that does not exist give the same answer (None),
so the views can answer both with the same 404.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from realtime import selectors as realtime_selectors
from realtime.access import snapshot_view
from realtime.models import Ack, Event, TopicCursor
from realtime.protocol import event_frame
from realtime.snapshots import snapshot_contacts, snapshot_get
from weddings import roles
from weddings import selectors as domain
from weddings.models import Booking, SupplierMembership, Wedding

# The feed of a wedding page starts with this many of its latest messages and
# emergencies; older ones stay in the event log (GET /api/weddings/<id>/events).
FEED_LIMIT = 100
# Open emergencies and unacknowledged timeline shifts shown when a page loads.
OPEN_EMERGENCY_LIMIT = 20
SHIFT_NOTICE_LIMIT = 5
# A shift older than this no longer asks to be acknowledged when a page loads.
SHIFT_NOTICE_MAX_AGE = dt.timedelta(hours=12)
# "My Saturday" lists at most this many weddings (staff on a busy Saturday see more
# through the admin); the page's one connection follows them all (200 topics at most).
SATURDAY_LIMIT = 200

FEED_EVENTS = ("message.posted", "emergency.raised", "emergency.resolved")


def display_name(user: Any) -> str:
    """How a person is named on the pages: full name, else username."""
    return user.get_full_name() or user.get_username()


def visible_wedding(user: Any, wedding_id: int) -> Wedding | None:
    """The wedding if ``user`` may see it; None alike for a hidden and a missing one."""
    return domain.weddings_visible_to(user).filter(pk=wedding_id).first()


def _local_today(wedding: Wedding, now: dt.datetime) -> dt.date:
    return now.astimezone(wedding.zone).date()


def _ceremony_label(wedding: Wedding) -> str:
    """The ceremony's local clock time with the zone's abbreviation: "14:00 BST"."""
    moment = dt.datetime.combine(wedding.date, wedding.ceremony_time, tzinfo=wedding.zone)
    return moment.strftime("%H:%M %Z")


def _roles(user: Any, weddings: list[Wedding]) -> dict[int, str]:
    """What the user is at each wedding: staff, the couple, or their booked supplier(s)."""
    if user.is_staff:
        return {w.pk: "Staff" for w in weddings}
    ids = [w.pk for w in weddings]
    roles: dict[int, list[str]] = {}
    bookings = (
        Booking.objects.filter(
            wedding_id__in=ids, active=True, supplier__memberships__user_id=user.pk
        )
        .select_related("supplier")
        .order_by("wedding_id", "supplier__name")
    )
    for booking in bookings:
        supplier = booking.supplier
        roles.setdefault(booking.wedding_id, []).append(
            f"{supplier.name} · {supplier.get_category_display()}"
        )
    as_couple = set(
        Wedding.couple.through.objects.filter(user_id=user.pk, wedding_id__in=ids).values_list(
            "wedding_id", flat=True
        )
    )
    return {
        w.pk: "Your wedding" if w.pk in as_couple else ", ".join(roles.get(w.pk, []))
        for w in weddings
    }


def saturday_weddings(user: Any, *, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The rows of "My Saturday": today's and later weddings the user may see.

    Vendors see the weddings their suppliers are actively booked on, the couple their
    own, from today (in each wedding's time zone) on; staff see every wedding taking
    place today. Each row carries the wedding topic's current ``seq``, from which the
    page tells what changed since the user last looked.
    """
    now = now or timezone.now()
    # Time zones run from UTC-12 to UTC+14: a wedding's local today is within a day
    # of the server's; the exact cut is made per wedding below.
    utc_today = now.astimezone(dt.UTC).date()
    queryset = domain.weddings_visible_to(user).order_by("date", "ceremony_time", "id")
    if user.is_staff:
        queryset = queryset.filter(
            date__gte=utc_today - dt.timedelta(days=1), date__lte=utc_today + dt.timedelta(days=1)
        )
    else:
        queryset = queryset.filter(date__gte=utc_today - dt.timedelta(days=1))
    weddings = []
    for wedding in queryset.iterator(chunk_size=500):
        local_today = _local_today(wedding, now)
        if wedding.date < local_today or (user.is_staff and wedding.date != local_today):
            continue
        weddings.append(wedding)
        if len(weddings) >= SATURDAY_LIMIT:
            break
    topics = [w.topic for w in weddings]
    seqs = dict(TopicCursor.objects.filter(topic__in=topics).values_list("topic", "last_seq"))
    roles = _roles(user, weddings)
    return [
        {
            "id": w.pk,
            "topic": w.topic,
            "url": reverse("web:wedding", args=[w.pk]),
            "couple": w.couple_names,
            "date": w.date,
            "today": w.date == _local_today(w, now),
            "ceremony": _ceremony_label(w),
            "time_zone": w.time_zone,
            "venue": w.venue_name,
            "status": w.get_status_display(),
            "role": roles.get(w.pk, ""),
            "seq": seqs.get(w.topic, 0),
        }
        for w in weddings
    ]


def _viewer(user: Any, wedding: Wedding, booked: set[int]) -> dict[str, Any]:
    mine = sorted(domain.user_supplier_ids(user) & booked)
    can_edit = domain.user_can_edit_timeline(user, wedding.pk)
    return {
        "user_id": user.pk,
        "name": display_name(user),
        "supplier_ids": mine,
        "can_edit": can_edit,
        "is_staff": bool(user.is_staff),
        # The couple follow their day's progress; they do not coordinate the vendors
        # (the role matrix, weddings.roles: read.coordination).
        "read_only": not roles.may(
            "read.coordination", staff=bool(user.is_staff), acting=bool(mine), editor=bool
        ),
        # The booked suppliers' phone numbers (read.contacts): the members, not the couple.
        "contacts": roles.may(
            "read.contacts", staff=bool(user.is_staff), acting=bool(mine), editor=bool
        ),
    }


def _people(wedding: Wedding, booked: set[int], extra_ids: set[int]) -> dict[str, str]:
    """Names of the people of this wedding (and of anyone who acted on it), by user id."""
    names: dict[int, str] = {}
    members = SupplierMembership.objects.filter(supplier_id__in=booked).select_related("user")
    for membership in members:
        names[membership.user_id] = display_name(membership.user)
    for user in wedding.couple.all():
        names[user.pk] = display_name(user)
    missing = extra_ids - names.keys()
    if missing:
        for user in get_user_model()._default_manager.filter(pk__in=missing):
            names[user.pk] = display_name(user)
    return {str(user_id): name for user_id, name in sorted(names.items())}


def _open_emergencies(topic: str, seq: int) -> list[dict[str, Any]]:
    """The emergencies raised up to ``seq`` and not resolved by then, oldest first."""
    resolved = realtime_selectors.resolved_emergencies([topic], seq_upto=seq)
    raised = [
        event
        for event in Event.objects.filter(
            topic=topic, seq__lte=seq, event="emergency.raised"
        ).order_by("-seq")
        if (topic, event.payload.get("id")) not in resolved
    ][:OPEN_EMERGENCY_LIMIT]
    raised.reverse()
    acked: dict[int, list[int]] = {event.pk: [] for event in raised}
    for event_id, user_id in (
        Ack.objects.filter(event_id__in=acked)
        .order_by("created_at", "id")
        .values_list("event_id", "user_id")
    ):
        acked[event_id].append(user_id)
    return [{"frame": event_frame(event), "acked": acked[event.pk]} for event in raised]


def _shift_notices(user: Any, topic: str, seq: int, mine: list[int]) -> list[dict[str, Any]]:
    """Recent shifts that moved the user's suppliers' items and that they have not acked."""
    if not mine:
        return []
    since = timezone.now() - SHIFT_NOTICE_MAX_AGE
    shifts = Event.objects.filter(
        topic=topic, seq__lte=seq, event="timeline.shifted", ack_required=True,
        created_at__gte=since,
    ).order_by("-seq")[:50]  # fmt: skip
    wanted = [event for event in shifts if set(event.payload.get("ack_suppliers", ())) & set(mine)]
    acked = set(Ack.objects.filter(user=user, event__in=wanted).values_list("event_id", flat=True))
    notices = [event_frame(event) for event in wanted if event.pk not in acked]
    return list(reversed(notices[:SHIFT_NOTICE_LIMIT]))


def wedding_page_state(*, user: Any, wedding: Wedding) -> dict[str, Any] | None:
    """Everything the live wedding page starts from, consistent at the snapshot's ``seq``.

    The snapshot (PROTOCOL §9; the booked suppliers' phone numbers only for those who
    may read them) plus the feed of messages and emergencies, the open
    emergencies with who acknowledged them, the shifts waiting for this user's
    acknowledgement, the names of the people involved, and what this user may do. All
    of it is read up to the snapshot's ``seq``: the page subscribes with that seq as
    ``since`` and the replay brings it up to date without gap or repeat. None when the
    wedding is gone. The caller has checked that ``user`` may see the wedding.
    """
    snapshot = snapshot_get(wedding.pk)
    if snapshot is None:
        return None
    seq = snapshot["seq"]
    topic = wedding.topic
    booked = {supplier["id"] for supplier in snapshot["suppliers"]}
    viewer = _viewer(user, wedding, booked)
    feed: list[dict[str, Any]] = []
    emergencies: list[dict[str, Any]] = []
    shifts: list[dict[str, Any]] = []
    if not viewer["read_only"]:
        latest = Event.objects.filter(topic=topic, seq__lte=seq, event__in=FEED_EVENTS)
        feed = [event_frame(event) for event in latest.order_by("-seq")[:FEED_LIMIT]]
        feed.reverse()
        emergencies = _open_emergencies(topic, seq)
        shifts = _shift_notices(user, topic, seq, viewer["supplier_ids"])
    actors = {frame["actor"]["user_id"] for frame in feed if frame["actor"]["user_id"]}
    actors |= {user_id for emergency in emergencies for user_id in emergency["acked"]}
    actors |= {
        e["frame"]["actor"]["user_id"] for e in emergencies if e["frame"]["actor"]["user_id"]
    }
    if viewer["read_only"]:  # the statuses without what only the vendors read
        snapshot = snapshot_view(snapshot, staff=False, supplier_ids=())
    # The phone numbers only for those who may call them (read.contacts).
    snapshot = snapshot_contacts(
        snapshot, staff=viewer["is_staff"], supplier_ids=viewer["supplier_ids"]
    )
    return {
        **snapshot,
        "topic": topic,
        "viewer": viewer,
        "people": _people(wedding, booked, actors),
        "feed": feed,
        "emergencies": emergencies,
        "shift_notices": shifts,
        "urls": {
            "state": reverse("web:wedding-state", args=[wedding.pk]),
            "history": reverse("wedding-events", args=[wedding.pk]),
            "home": reverse("web:home"),
        },
    }


def demo_logins(path: Path) -> dict[str, Any] | None:
    """The first demo wedding's logins from a ``seed_demo --json`` file, for the sign-in
    page of a development machine: planner, photographer and couple; None without one."""
    try:
        demo = json.loads(Path(path).read_text())
        wedding = demo["weddings"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    logins: list[dict[str, str]] = []
    password = None
    wanted = {"planner": "Planner", "photographer": "Photographer"}
    for supplier in wedding.get("suppliers") or []:
        label = wanted.pop(supplier.get("category"), None)
        users = supplier.get("users") or []
        if label and users and users[0].get("username"):
            logins.append({"role": label, "username": users[0]["username"]})
            password = password or users[0].get("password")
    couple = wedding.get("couple") or {}
    if couple.get("username"):
        logins.append({"role": "Couple", "username": couple["username"]})
        password = password or couple.get("password")
    if not logins:
        return None
    return {
        "wedding": wedding.get("name") or f"wedding {wedding.get('id')}",
        "logins": logins,
        "password": password or "",
    }
