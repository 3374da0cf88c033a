"""Small builders of domain objects for tests: explicit, no magic, real database rows."""

from __future__ import annotations

import datetime as dt
import itertools
import zoneinfo

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser

from weddings.models import Booking, Supplier, SupplierMembership, TimelineItem, Wedding

_counter = itertools.count(1)


def make_user(*, username: str | None = None, is_staff: bool = False, **extra) -> AbstractUser:
    """A user with password 'pw-<username>'."""
    username = username or f"user{next(_counter)}"
    user = get_user_model().objects.create_user(
        username=username, password=f"pw-{username}", is_staff=is_staff, **extra
    )
    return user


def make_supplier(
    *, category: str = Supplier.Category.PHOTOGRAPHER, users: tuple = (), role: str = "member"
) -> Supplier:
    supplier = Supplier.objects.create(name=f"Supplier {next(_counter)}", category=category)
    for user in users:
        SupplierMembership.objects.create(supplier=supplier, user=user, role=role)
    return supplier


def make_wedding(*, couple: tuple = (), date: dt.date | None = None, **extra) -> Wedding:
    wedding = Wedding.objects.create(
        partner_one=extra.pop("partner_one", "Alex"),
        partner_two=extra.pop("partner_two", "Sam"),
        date=date or dt.date(2026, 6, 13),
        ceremony_time=extra.pop("ceremony_time", dt.time(14, 0)),
        time_zone=extra.pop("time_zone", "Europe/London"),
        **extra,
    )
    if couple:
        wedding.couple.add(*couple)
    return wedding


def make_booking(*, supplier: Supplier, wedding: Wedding, active: bool = True) -> Booking:
    return Booking.objects.create(supplier=supplier, wedding=wedding, active=active)


def local_dt(wedding: Wedding, hour: int, minute: int = 0) -> dt.datetime:
    """An aware datetime on the wedding's date, at a local clock time of its time zone."""
    return dt.datetime.combine(
        wedding.date, dt.time(hour, minute), tzinfo=zoneinfo.ZoneInfo(wedding.time_zone)
    )


def make_item(
    *, wedding: Wedding, title: str, start: tuple[int, int], minutes: int = 30, **extra
) -> TimelineItem:
    starts_at = local_dt(wedding, *start)
    return TimelineItem.objects.create(
        wedding=wedding,
        title=title,
        starts_at=starts_at,
        ends_at=starts_at + dt.timedelta(minutes=minutes),
        **extra,
    )
