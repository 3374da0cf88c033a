"""The wedding domain: suppliers and their users, weddings, bookings, the timeline.

A vendor's right to a wedding comes only from an active ``Booking`` of one of its
suppliers; the couple's from ``Wedding.couple``; staff (``is_staff``) see everything.
Writes go through ``weddings.services``; reads through ``weddings.selectors``.
"""

from __future__ import annotations

import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


def validate_time_zone(value: str) -> None:
    """Reject names that are not IANA time zones (Europe/London, America/New_York ...)."""
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not a known time zone (for example Europe/London).")


class TimestampedModel(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True, editable=False)

    class Meta:
        abstract = True


class Supplier(TimestampedModel):
    """A vendor business that works weddings: a photographer, a caterer, a planner ..."""

    class Category(models.TextChoices):
        PLANNER = "planner", "Planner"
        PHOTOGRAPHER = "photographer", "Photographer"
        VIDEOGRAPHER = "videographer", "Videographer"
        VENUE = "venue", "Venue"
        CATERER = "caterer", "Caterer"
        FLORIST = "florist", "Florist"
        MUSIC = "music", "Music"
        HAIR_MAKEUP = "hair_makeup", "Hair & make-up"
        OFFICIANT = "officiant", "Officiant"
        TRANSPORT = "transport", "Transport"
        OTHER = "other", "Other"

    name = models.CharField(max_length=200)
    category = models.CharField(max_length=20, choices=Category.choices, db_index=True)
    email = models.EmailField(blank=True)
    phone = models.CharField(max_length=40, blank=True)
    users = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        through="SupplierMembership",
        related_name="suppliers",
        blank=True,
    )

    class Meta:
        ordering = ("name", "id")

    def __str__(self) -> str:
        return f"{self.name} ({self.get_category_display()})"


class SupplierMembership(TimestampedModel):
    """A user working for a supplier, with their role in it."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        COORDINATOR = "coordinator", "Coordinator"
        MEMBER = "member", "Member"

    supplier = models.ForeignKey(Supplier, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="supplier_memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("supplier", "user"), name="unique_supplier_member"),
        ]

    def __str__(self) -> str:
        return f"{self.user} at {self.supplier.name} ({self.role})"


class Wedding(TimestampedModel):
    """One wedding day: the couple, when and where, and how many guests."""

    class Status(models.TextChoices):
        PLANNING = "planning", "Planning"
        CONFIRMED = "confirmed", "Confirmed"
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"
        CANCELLED = "cancelled", "Cancelled"

    partner_one = models.CharField("first partner's name", max_length=120)
    partner_two = models.CharField("second partner's name", max_length=120)
    date = models.DateField(db_index=True)
    ceremony_time = models.TimeField(help_text="Local time at the venue.")
    time_zone = models.CharField(
        max_length=64, default="Europe/London", validators=[validate_time_zone]
    )
    venue_name = models.CharField(max_length=200, blank=True)
    venue_address = models.CharField(max_length=400, blank=True)
    guest_count = models.PositiveIntegerField(
        default=0, validators=[MinValueValidator(0), MaxValueValidator(100_000)]
    )
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PLANNING, db_index=True
    )
    notes = models.TextField(blank=True)
    couple = models.ManyToManyField(
        settings.AUTH_USER_MODEL, related_name="couple_weddings", blank=True
    )
    suppliers = models.ManyToManyField(
        Supplier, through="Booking", related_name="weddings", blank=True
    )

    class Meta:
        ordering = ("date", "ceremony_time", "id")

    def __str__(self) -> str:
        return f"{self.couple_names} — {self.date:%Y-%m-%d}"

    @property
    def couple_names(self) -> str:
        return f"{self.partner_one} & {self.partner_two}"

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    @property
    def topic(self) -> str:
        """The realtime topic of this wedding (PROTOCOL §3)."""
        return f"wedding:{self.pk}"


class Booking(TimestampedModel):
    """A supplier booked for a wedding: the only source of a vendor's right to it."""

    supplier = models.ForeignKey(Supplier, on_delete=models.CASCADE, related_name="bookings")
    wedding = models.ForeignKey(Wedding, on_delete=models.CASCADE, related_name="bookings")
    active = models.BooleanField(default=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("supplier", "wedding"), name="unique_booking"),
        ]
        ordering = ("wedding_id", "supplier__name")

    def __str__(self) -> str:
        state = "" if self.active else " (inactive)"
        return f"{self.supplier.name} for {self.wedding}{state}"


class TimelineItem(TimestampedModel):
    """One moment of the day's running order. ``version`` guards concurrent edits."""

    class Status(models.TextChoices):
        PLANNED = "planned", "Planned"
        IN_PROGRESS = "in_progress", "In progress"
        DONE = "done", "Done"
        DELAYED = "delayed", "Delayed"
        CANCELLED = "cancelled", "Cancelled"

    wedding = models.ForeignKey(Wedding, on_delete=models.CASCADE, related_name="timeline_items")
    title = models.CharField(max_length=200)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)
    location = models.CharField(max_length=200, blank=True)
    suppliers = models.ManyToManyField(Supplier, related_name="timeline_items", blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PLANNED)
    key_moment = models.BooleanField(
        default=False, help_text="Shown highlighted: vows, first dance ..."
    )
    pinned = models.BooleanField(
        default=False, help_text="A fixed clock time (a sunset slot): shifts leave it in place."
    )
    version = models.PositiveIntegerField(default=1, editable=False)

    class Meta:
        ordering = ("starts_at", "id")
        indexes = [models.Index(fields=("wedding", "starts_at"))]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__isnull=True)
                | models.Q(ends_at__gte=models.F("starts_at")),
                name="timeline_item_ends_after_start",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} @ {self.starts_at:%H:%M}"


# Guests of one wedding, at most: a bound on every guest read (the snapshot carries the
# list) and on what one wedding's staff can add. A 1,000-guest list is ~150 kB of JSON.
MAX_GUESTS_PER_WEDDING = 1000


class Guest(TimestampedModel):
    """One guest of a wedding: their RSVP, what they eat, and where they sit.

    The table is a name on the guest (``table``), not a model of its own: the day needs
    who sits where and what each table eats, and a table with nobody at it serves
    nobody (ADR 0026). Who reads what of this is the role matrix's ``guests.*`` rows.
    """

    class Rsvp(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        DECLINED = "declined", "Declined"

    class Diet(models.TextChoices):
        NONE = "none", "No requirement"
        VEGETARIAN = "vegetarian", "Vegetarian"
        VEGAN = "vegan", "Vegan"
        PESCATARIAN = "pescatarian", "Pescatarian"
        HALAL = "halal", "Halal"
        KOSHER = "kosher", "Kosher"
        GLUTEN_FREE = "gluten_free", "Gluten-free"
        DAIRY_FREE = "dairy_free", "Dairy-free"
        NUT_ALLERGY = "nut_allergy", "Nut allergy"
        OTHER = "other", "Other (see the note)"

    wedding = models.ForeignKey(Wedding, on_delete=models.CASCADE, related_name="guests")
    name = models.CharField(max_length=120)
    rsvp = models.CharField(
        "RSVP", max_length=10, choices=Rsvp.choices, default=Rsvp.PENDING, db_index=True
    )
    diet = models.CharField(max_length=20, choices=Diet.choices, default=Diet.NONE)
    dietary_note = models.CharField(
        max_length=200,
        blank=True,
        help_text="Shown to the caterer without the guest's name: write the need "
        "(“severe nut allergy, no traces”), not who has it.",
    )
    table = models.CharField(
        max_length=40, blank=True, help_text="Table name or number; blank: not seated yet."
    )

    class Meta:
        ordering = ("wedding_id", "name", "id")
        indexes = [models.Index(fields=("wedding", "table"))]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_rsvp_display()})"

    def clean(self) -> None:
        """A new guest of a wedding that has ``MAX_GUESTS_PER_WEDDING`` already is refused
        (the admin's form shows it; the services check it under the wedding's lock)."""
        super().clean()
        if self._state.adding and self.wedding_id is not None:
            count = Guest.objects.filter(wedding_id=self.wedding_id).count()
            if count >= MAX_GUESTS_PER_WEDDING:
                raise ValidationError(
                    f"This wedding has {count} guests, the most one wedding may have "
                    f"({MAX_GUESTS_PER_WEDDING})."
                )
