"""Demo data: a Saturday of weddings with suppliers, couples, timelines, guests, logins and
tokens.

Used by ``python manage.py seed_demo`` (a newcomer's first run) and by the load benchmark,
which seeds thousands of users: so one password hash serves a whole run (PBKDF2 takes
~0.3 s per hash) and every table is filled with ``bulk_create``, in rounds of weddings so
memory stays bounded, all in one transaction.

Tokens come from the caller (``issue_token``): realtime issues them, and the domain does
not import realtime.

This writes straight to the models rather than through ``weddings.services``: it creates
rows in bulk that no service creates one by one, and it publishes nothing.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import secrets
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.utils import timezone

from weddings.models import Booking, Guest, Supplier, SupplierMembership, TimelineItem, Wedding

MAX_WEDDINGS = 10_000
MAX_VENDORS_PER_WEDDING = 500
STAFF_USERNAME = "staff"
# Suppliers (and as many users) written per round of bulk inserts: a few thousand rows per
# table keep memory and statement sizes small while the round trips stay few.
_VENDORS_PER_ROUND = 2_000

Category = Supplier.Category
_OTHER_CATEGORIES = [c for c in Category.values if c != Category.PLANNER]

_FIRST_NAMES = tuple(
    "Alex Sam Priya Tom Aisha Ben Chloe Daniel Emma Femi Grace Harry Isla Jamal Katie Liam "
    "Maya Noah Olivia Rhys Sofia Zara Oisín Mei".split()
)
_SURNAMES = tuple(
    "Ahmed Brennan Clarke Dhillon Evans Fletcher Green Hughes Iqbal Jones Kowalski Lewis "
    "Murphy Nowak Okafor Patel".split()
)


# A few guests per wedding (the guest data of ADR 0026: RSVP, diet, table), enough for
# every view of them to show something; ``guest_count`` stays the planned head count.
_DEMO_GUESTS = (6, 12)
_DIETS = (
    [Guest.Diet.NONE] * 6
    + [Guest.Diet.VEGETARIAN, Guest.Diet.VEGETARIAN, Guest.Diet.VEGAN, Guest.Diet.GLUTEN_FREE]
    + [Guest.Diet.NUT_ALLERGY, Guest.Diet.HALAL]
)
_NOTES = {
    Guest.Diet.NUT_ALLERGY: "Severe nut allergy: no traces, EpiPen carried",
    Guest.Diet.GLUTEN_FREE: "Coeliac: separate toaster and board",
}


@dataclass(frozen=True)
class _Venue:
    name: str
    address: str
    time_zone: str
    longitude: float  # degrees east; only moves the approximate sunset


_VENUES = (
    _Venue("Orchard Barn", "Lower Farm Lane, Chipping Norton OX7 5QT", "Europe/London", -1.55),
    _Venue("Hartwell Manor", "Oxford Road, Aylesbury HP17 8NR", "Europe/London", -0.85),
    _Venue("The Old Boathouse", "Riverside, Henley-on-Thames RG9 1BH", "Europe/London", -0.90),
    _Venue("Cliffside Chapel", "Harbour Road, St Ives TR26 1LP", "Europe/London", -5.48),
    _Venue("Ashdown Glasshouse", "Forest Row, East Sussex RH18 5JP", "Europe/London", 0.03),
    _Venue("Kilcarra House", "Kilcarra, Co. Wicklow A67 X2Y4", "Europe/Dublin", -6.25),
    _Venue("Bellingham Hall", "Hall Road, Bellingham NE48 2AA", "Europe/London", -2.25),
    _Venue("Wharfside Warehouse", "Canal Wharf, Leeds LS11 5PY", "Europe/London", -1.55),
)

_SUPPLIER_WORDS = tuple(
    "Willow Bramble Kestrel Meadowsweet Foxglove Harbour Juniper Larkspur Saltmarsh "
    "Elderflower Hawthorn Rowan".split()
)
_SUPPLIER_SUFFIX = {
    Category.PLANNER: "Weddings & Events",
    Category.PHOTOGRAPHER: "Photography",
    Category.VIDEOGRAPHER: "Films",
    Category.VENUE: "Venue Team",
    Category.CATERER: "Kitchen",
    Category.FLORIST: "Flowers",
    Category.MUSIC: "Band",
    Category.HAIR_MAKEUP: "Hair & Make-up",
    Category.OFFICIANT: "Ceremonies",
    Category.TRANSPORT: "Carriages",
    Category.OTHER: "Hire Co.",
}


@dataclass(frozen=True)
class _Slot:
    """An item of the running order, placed relative to the ceremony."""

    title: str
    start: int  # minutes after the ceremony starts (negative: before)
    minutes: int
    location: str
    categories: tuple[str, ...]  # the suppliers of these categories work it
    key_moment: bool = False


_PLANNER, _PHOTO, _VIDEO = Category.PLANNER, Category.PHOTOGRAPHER, Category.VIDEOGRAPHER
_RELATIVE_ITEMS = (
    _Slot("Getting ready: hair & make-up", -240, 150, "Bridal suite",
          (_PLANNER, Category.HAIR_MAKEUP, _PHOTO, _VIDEO)),
    _Slot("First look", -75, 15, "Walled garden", (_PLANNER, _PHOTO, _VIDEO)),
    _Slot("Guests arrive", -30, 30, "Main entrance",
          (_PLANNER, Category.VENUE, Category.MUSIC, Category.TRANSPORT)),
    _Slot("Ceremony", 0, 45, "Ceremony room",
          (_PLANNER, Category.OFFICIANT, _PHOTO, _VIDEO, Category.MUSIC, Category.FLORIST,
           Category.VENUE), key_moment=True),
    _Slot("Drinks reception", 45, 90, "Terrace",
          (_PLANNER, Category.CATERER, Category.VENUE, Category.MUSIC, Category.FLORIST)),
    _Slot("Group & couple photos", 60, 45, "Lawn", (_PLANNER, _PHOTO, _VIDEO)),
    _Slot("Wedding breakfast", 135, 105, "Great hall",
          (_PLANNER, Category.CATERER, Category.VENUE)),
    _Slot("Speeches", 240, 45, "Great hall",
          (_PLANNER, _PHOTO, _VIDEO, Category.MUSIC, Category.VENUE)),
    _Slot("Cake cutting", 290, 10, "Great hall", (_PLANNER, Category.CATERER, _PHOTO, _VIDEO)),
    _Slot("First dance", 310, 15, "Ballroom",
          (_PLANNER, Category.MUSIC, _PHOTO, _VIDEO), key_moment=True),
)  # fmt: skip
_SUNSET_CATEGORIES = (_PLANNER, _PHOTO, _VIDEO)
_BUFFET_CATEGORIES = (_PLANNER, Category.CATERER, Category.VENUE)
_LAST_DANCE_CATEGORIES = (_PLANNER, Category.MUSIC, Category.VENUE)
_CARRIAGES_CATEGORIES = (_PLANNER, Category.TRANSPORT, Category.VENUE)
# Ceremonies start on the half hour between 12:00 and 16:00, early enough in winter for
# the drinks reception to end before the sunset portraits.
_CEREMONY_TIMES = tuple(dt.time(12 + half // 2, 30 * (half % 2)) for half in range(9))


# Issues a login's realtime token (``realtime.tokens.token_issuer(ttl)``).
TokenIssuer = Callable[[Any], str]


class DemoSeedError(ValueError):
    """Arguments seed_demo refuses, or a clash with rows already in the database."""


@dataclass(frozen=True)
class _Context:
    """What every round of one run shares."""

    rng: random.Random
    date: dt.date
    password: str
    password_hash: str
    issue_token: TokenIssuer | None
    vendors: int


@dataclass(frozen=True)
class _ItemSpec:
    title: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    location: str
    categories: tuple[str, ...]
    key_moment: bool = False
    pinned: bool = False


def coming_saturday(today: dt.date | None = None) -> dt.date:
    """The next Saturday, or today when today is one: the demo's wedding day."""
    today = today or timezone.localdate()
    return today + dt.timedelta(days=(5 - today.weekday()) % 7)


def _approximate_sunset(date: dt.date, venue: _Venue) -> dt.datetime:
    """Sunset in Britain and Ireland to within ~20 minutes: plenty for demo data."""
    day = date.timetuple().tm_yday
    minutes_utc = 18 * 60 + 10 + 140 * math.sin(2 * math.pi * (day - 80) / 365)
    minutes_utc -= 4 * venue.longitude  # the sun sets 4 minutes later per degree west
    midnight = dt.datetime.combine(date, dt.time(0), tzinfo=dt.UTC)
    sunset = midnight + dt.timedelta(minutes=minutes_utc)
    return sunset.astimezone(zoneinfo.ZoneInfo(venue.time_zone))


def _round_to_five_minutes(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=moment.minute - moment.minute % 5, second=0, microsecond=0)


def _sunset_slot(date: dt.date, venue: _Venue) -> dt.datetime:
    return _round_to_five_minutes(_approximate_sunset(date, venue) - dt.timedelta(minutes=30))


def _pick_ceremony_time(rng: random.Random, date: dt.date, venue: _Venue) -> dt.time:
    zone = zoneinfo.ZoneInfo(venue.time_zone)
    latest = _sunset_slot(date, venue) - dt.timedelta(minutes=135)
    fitting = [t for t in _CEREMONY_TIMES if dt.datetime.combine(date, t, tzinfo=zone) <= latest]
    return rng.choice(fitting or _CEREMONY_TIMES[:1])


def _timeline(wedding: Wedding, venue: _Venue) -> list[_ItemSpec]:
    """About a dozen items around the ceremony, as aware datetimes in the wedding's zone."""
    zone = zoneinfo.ZoneInfo(wedding.time_zone)
    ceremony = dt.datetime.combine(wedding.date, wedding.ceremony_time, tzinfo=zone)
    specs = [
        _ItemSpec(
            title=slot.title,
            starts_at=ceremony + dt.timedelta(minutes=slot.start),
            ends_at=ceremony + dt.timedelta(minutes=slot.start + slot.minutes),
            location=slot.location,
            categories=slot.categories,
            key_moment=slot.key_moment,
        )
        for slot in _RELATIVE_ITEMS
    ]
    sunset = _sunset_slot(wedding.date, venue)
    specs.append(
        _ItemSpec(
            title="Sunset portraits",
            starts_at=sunset,
            ends_at=sunset + dt.timedelta(minutes=20),
            location="Hilltop",
            categories=_SUNSET_CATEGORIES,
            pinned=True,  # the sun does not wait for a late speech
        )
    )
    # The evening runs to a clock time, not from the ceremony: buffet, then last dance.
    first_dance_end = specs[len(_RELATIVE_ITEMS) - 1].ends_at
    buffet = max(
        dt.datetime.combine(wedding.date, dt.time(20, 30), tzinfo=zone),
        first_dance_end + dt.timedelta(minutes=45),
    )
    last_dance = max(
        dt.datetime.combine(wedding.date, dt.time(23, 15), tzinfo=zone),
        buffet + dt.timedelta(minutes=90),
    )
    carriages = last_dance + dt.timedelta(minutes=15)
    specs += [
        _ItemSpec(
            title="Evening buffet",
            starts_at=buffet,
            ends_at=buffet + dt.timedelta(minutes=60),
            location="Orangery",
            categories=_BUFFET_CATEGORIES,
        ),
        _ItemSpec(
            title="Last dance",
            starts_at=last_dance,
            ends_at=carriages,
            location="Ballroom",
            categories=_LAST_DANCE_CATEGORIES,
        ),
        _ItemSpec(
            title="Carriages",
            starts_at=carriages,
            ends_at=carriages + dt.timedelta(minutes=30),
            location="Main entrance",
            categories=_CARRIAGES_CATEGORIES,
        ),
    ]
    return sorted(specs, key=lambda spec: spec.starts_at)


def _validate(*, weddings: int, vendors_per_wedding: int) -> None:
    for name, value, maximum in (
        ("weddings", weddings, MAX_WEDDINGS),
        ("vendors per wedding", vendors_per_wedding, MAX_VENDORS_PER_WEDDING),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            raise DemoSeedError(
                f"The number of {name} must be between 1 and {maximum}, not {value}."
            )


def seed_demo(
    *,
    weddings: int,
    vendors_per_wedding: int,
    progress: Callable[[int, int], None] | None = None,
    issue_token: TokenIssuer | None = None,
    with_staff: bool = True,
) -> dict[str, Any]:
    """Create a demo Saturday and return its logins and tokens (PROTOCOL §10 JSON).

    ``issue_token(user)`` gives each login's ``token`` (realtime's ``token_issuer(ttl)``:
    tokens belong to the realtime layer above this one); without it the logins have no
    token. ``progress(done, total)`` is called with counts of weddings about every tenth of the
    run. The "staff" superuser is created with this run's password when there is no
    account of that name; an existing one is never changed (its ``password`` in the JSON
    is then None: it keeps its own). ``with_staff=False`` leaves "staff" out altogether
    (the load benchmark); the JSON then has no ``staff``. Raises DemoSeedError for
    arguments out of range; writes nothing then.
    """
    _validate(weddings=weddings, vendors_per_wedding=vendors_per_wedding)
    password = secrets.token_urlsafe(12)
    password_hash = make_password(password)  # once: every user of this run shares it
    context = _Context(
        rng=random.Random(),  # noqa: S311 (demo variety, not security)
        date=coming_saturday(),
        password=password,
        password_hash=password_hash,
        issue_token=issue_token,
        vendors=vendors_per_wedding,
    )
    per_round = max(1, min(math.ceil(weddings / 10), _VENDORS_PER_ROUND // vendors_per_wedding))
    result: dict[str, Any] = {"weddings": []}
    with transaction.atomic():
        if with_staff:
            result["staff"] = _staff(context)
        done = 0
        while done < weddings:
            count = min(per_round, weddings - done)
            result["weddings"] += _seed_round(context, count)
            done += count
            if progress is not None:
                progress(done, weddings)
    return result


def _login(context: _Context, user, *, password_known: bool = True) -> dict[str, Any]:
    login: dict[str, Any] = {
        "username": user.username,
        "password": context.password if password_known else None,
    }
    if context.issue_token is not None:
        login["token"] = context.issue_token(user)
    login["user_id"] = user.pk
    return login


def _staff(context: _Context) -> dict[str, Any]:
    """The staff superuser: created with this run's password when no account has its name.
    An existing account is somebody's (perhaps a real operator's): it is left exactly as
    it is, its password, flags and names untouched, and its login has no password."""
    user_model = get_user_model()
    staff = user_model._default_manager.filter(username=STAFF_USERNAME).first()
    if staff is not None:
        return _login(context, staff, password_known=False)
    staff = user_model(
        username=STAFF_USERNAME,
        password=context.password_hash,
        first_name="WedSync",
        last_name="Staff",
        email="staff@example.com",
        is_staff=True,
        is_superuser=True,
        is_active=True,
    )
    staff.save()
    return _login(context, staff)


def _new_user(context: _Context, user_model, username: str, **names: str):
    return user_model(
        username=username,
        password=context.password_hash,
        first_name=names.get("first_name", context.rng.choice(_FIRST_NAMES)),
        last_name=names.get("last_name", context.rng.choice(_SURNAMES)),
        email=f"{username}@example.com",
        is_active=True,
    )


def _guests(rng: random.Random, wedding: Wedding) -> list[Guest]:
    """A few guests of a demo wedding: most accepted, seated at tables 1-3 (or not yet)."""
    guests = []
    for _ in range(rng.randint(*_DEMO_GUESTS)):
        diet = rng.choice(_DIETS)
        rsvp = rng.choices(Guest.Rsvp.values, weights=(2, 7, 1))[0]
        guests.append(
            Guest(
                wedding=wedding,
                name=f"{rng.choice(_FIRST_NAMES)} {rng.choice(_SURNAMES)}",
                rsvp=rsvp,
                diet=diet,
                dietary_note=_NOTES.get(diet, ""),
                table="" if rsvp == Guest.Rsvp.DECLINED else str(rng.randint(1, 3)),
            )
        )
    return guests


def _seed_round(context: _Context, count: int) -> list[dict[str, Any]]:
    """Write ``count`` weddings with everything they need, in a few bulk inserts."""
    rng = context.rng
    user_model = get_user_model()

    venues: list[_Venue] = []
    wedding_rows: list[Wedding] = []
    for _ in range(count):
        venue = rng.choice(_VENUES)
        partner_one, partner_two = rng.sample(_FIRST_NAMES, 2)
        venues.append(venue)
        wedding_rows.append(
            Wedding(
                partner_one=partner_one,
                partner_two=partner_two,
                date=context.date,
                ceremony_time=_pick_ceremony_time(rng, context.date, venue),
                time_zone=venue.time_zone,
                venue_name=venue.name,
                venue_address=venue.address,
                guest_count=rng.randrange(40, 221, 5),
                status=Wedding.Status.CONFIRMED,
                notes="Demo wedding (seed_demo).",
            )
        )
    Wedding.objects.bulk_create(wedding_rows)

    # One supplier and one user per vendor slot; the first of each wedding is the planner.
    suppliers: list[Supplier] = []
    users: list[Any] = []
    couples: list[Any] = []
    for wedding in wedding_rows:
        categories = [Category.PLANNER.value] + [
            _OTHER_CATEGORIES[k % len(_OTHER_CATEGORIES)] for k in range(context.vendors - 1)
        ]
        seen: dict[str, int] = {}
        for category in categories:
            seen[category] = seen.get(category, 0) + 1
            username = f"w{wedding.pk}-{category.replace('_', '-')}-{seen[category]}"
            suppliers.append(
                Supplier(
                    name=f"{rng.choice(_SUPPLIER_WORDS)} {_SUPPLIER_SUFFIX[category]}",
                    category=category,
                    email=f"{username}@example.com",
                )
            )
            users.append(_new_user(context, user_model, username))
        couples.append(
            _new_user(
                context,
                user_model,
                f"w{wedding.pk}-couple",
                first_name=wedding.partner_one,
                last_name=f"& {wedding.partner_two}",
            )
        )

    clashing = list(
        user_model._default_manager.filter(
            username__in=[u.username for u in users + couples]
        ).values_list("username", flat=True)[:5]
    )
    if clashing:
        raise DemoSeedError(f"Users named like this run's already exist: {', '.join(clashing)}.")
    Supplier.objects.bulk_create(suppliers)
    user_model._default_manager.bulk_create(users + couples)

    per_wedding = context.vendors
    memberships, bookings, couple_rows, items, item_suppliers = [], [], [], [], []
    for index, wedding in enumerate(wedding_rows):
        wedding_suppliers = suppliers[index * per_wedding : (index + 1) * per_wedding]
        wedding_users = users[index * per_wedding : (index + 1) * per_wedding]
        for supplier, user in zip(wedding_suppliers, wedding_users, strict=True):
            role = (
                SupplierMembership.Role.COORDINATOR
                if supplier.category == Category.PLANNER
                else SupplierMembership.Role.MEMBER
            )
            memberships.append(SupplierMembership(supplier=supplier, user=user, role=role))
            bookings.append(Booking(supplier=supplier, wedding=wedding, active=True))
        couple_rows.append(Wedding.couple.through(wedding_id=wedding.pk, user_id=couples[index].pk))
        by_category: dict[str, list[Supplier]] = {}
        for supplier in wedding_suppliers:
            by_category.setdefault(supplier.category, []).append(supplier)
        for spec in _timeline(wedding, venues[index]):
            items.append(
                TimelineItem(
                    wedding=wedding,
                    title=spec.title,
                    starts_at=spec.starts_at,
                    ends_at=spec.ends_at,
                    location=spec.location,
                    key_moment=spec.key_moment,
                    pinned=spec.pinned,
                )
            )
            item_suppliers.append(
                [s for category in spec.categories for s in by_category.get(category, ())]
            )
    SupplierMembership.objects.bulk_create(memberships)
    Booking.objects.bulk_create(bookings)
    Wedding.couple.through.objects.bulk_create(couple_rows)
    TimelineItem.objects.bulk_create(items)
    Guest.objects.bulk_create(guest for wedding in wedding_rows for guest in _guests(rng, wedding))
    through = TimelineItem.suppliers.through
    through.objects.bulk_create(
        through(timelineitem_id=item.pk, supplier_id=supplier.pk)
        for item, assigned in zip(items, item_suppliers, strict=True)
        for supplier in assigned
    )

    return [
        {
            "id": wedding.pk,
            "topic": wedding.topic,
            "name": wedding.couple_names,
            "date": wedding.date.isoformat(),
            "ceremony_time": wedding.ceremony_time.strftime("%H:%M"),
            "time_zone": wedding.time_zone,
            "venue": wedding.venue_name,
            "guest_count": wedding.guest_count,
            "suppliers": [
                {
                    "id": supplier.pk,
                    "name": supplier.name,
                    "category": supplier.category,
                    "users": [_login(context, user)],
                }
                for supplier, user in zip(
                    suppliers[index * per_wedding : (index + 1) * per_wedding],
                    users[index * per_wedding : (index + 1) * per_wedding],
                    strict=True,
                )
            ],
            "couple": _login(context, couples[index]),
        }
        for index, wedding in enumerate(wedding_rows)
    ]
