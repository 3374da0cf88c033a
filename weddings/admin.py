"""Django admin of the wedding domain, for staff only (the default admin site's rule).

Admin edits write the ORM directly rather than through ``weddings.services``, so they
are not broadcast; each saved change of a timeline item still raises its ``version``,
so live clients holding the old one get ``conflict`` with the current item. Guests have a
page of their own, filtered by RSVP, diet and date (a wedding's page would carry up to
``MAX_GUESTS_PER_WEDDING`` rows inline); ``Guest.clean`` refuses one past that cap, and
every save drops the wedding's cached guests.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, F, QuerySet
from django.forms import BaseFormSet, ModelForm
from django.http import HttpRequest

from weddings.models import Booking, Guest, Supplier, SupplierMembership, TimelineItem, Wedding

TIMESTAMPS = ("created_at", "updated_at")


def _bump_version(item: TimelineItem) -> None:
    """Make this save of an existing item a new version (in the database, race-free)."""
    item.version = F("version") + 1


class SupplierMembershipInline(admin.TabularInline):
    model = SupplierMembership
    extra = 0
    autocomplete_fields = ("user",)
    fields = ("user", "role", *TIMESTAMPS)
    readonly_fields = TIMESTAMPS


@admin.register(Supplier)
class SupplierAdmin(admin.ModelAdmin):
    list_display = ("name", "category", "users_count", "created_at")
    list_filter = ("category",)
    search_fields = ("name", "email")
    readonly_fields = TIMESTAMPS
    inlines = (SupplierMembershipInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Supplier]:
        return super().get_queryset(request).annotate(_users_count=Count("memberships"))

    @admin.display(description="users", ordering="_users_count")
    def users_count(self, supplier: Supplier) -> int:
        return supplier._users_count


class BookingInline(admin.TabularInline):
    model = Booking
    extra = 0
    autocomplete_fields = ("supplier",)
    fields = ("supplier", "active", *TIMESTAMPS)
    readonly_fields = TIMESTAMPS


class TimelineItemInline(admin.TabularInline):
    model = TimelineItem
    extra = 0
    fields = (
        "title",
        "starts_at",
        "ends_at",
        "location",
        "status",
        "key_moment",
        "pinned",
        "version",
    )
    readonly_fields = ("version",)
    show_change_link = True  # suppliers are edited on the item's own page


@admin.register(Guest)
class GuestAdmin(admin.ModelAdmin):
    list_display = ("name", "wedding", "rsvp", "diet", "table")
    list_filter = ("rsvp", "diet", "wedding__date")
    search_fields = (
        "name",
        "table",
        "dietary_note",
        "wedding__partner_one",
        "wedding__partner_two",
    )
    list_select_related = ("wedding",)
    autocomplete_fields = ("wedding",)
    readonly_fields = TIMESTAMPS


@admin.register(Wedding)
class WeddingAdmin(admin.ModelAdmin):
    list_display = ("couple_names", "date", "ceremony_time", "venue_name", "guest_count", "status")
    list_filter = ("status", "date")
    search_fields = ("partner_one", "partner_two", "venue_name")
    date_hierarchy = "date"
    filter_horizontal = ("couple",)
    readonly_fields = TIMESTAMPS
    inlines = (BookingInline, TimelineItemInline)

    @admin.display(description="couple", ordering="partner_one")
    def couple_names(self, wedding: Wedding) -> str:
        return wedding.couple_names

    def save_formset(
        self, request: HttpRequest, form: ModelForm, formset: BaseFormSet, change: bool
    ) -> None:
        if formset.model is not TimelineItem:
            super().save_formset(request, form, formset, change)
            return
        changed = [
            item_form.instance
            for item_form in formset.initial_forms
            if item_form.has_changed() and item_form not in formset.deleted_forms
        ]
        for item in changed:
            _bump_version(item)
        formset.save()
        for item in changed:
            item.refresh_from_db(fields=["version"])


@admin.register(Booking)
class BookingAdmin(admin.ModelAdmin):
    list_display = ("wedding", "supplier", "supplier_category", "active", "created_at")
    list_filter = ("active", "supplier__category")
    search_fields = ("supplier__name", "wedding__partner_one", "wedding__partner_two")
    list_select_related = ("wedding", "supplier")
    autocomplete_fields = ("supplier", "wedding")
    readonly_fields = TIMESTAMPS

    @admin.display(description="category", ordering="supplier__category")
    def supplier_category(self, booking: Booking) -> str:
        return booking.supplier.get_category_display()


@admin.register(TimelineItem)
class TimelineItemAdmin(admin.ModelAdmin):
    list_display = ("wedding", "title", "starts_at", "status", "key_moment", "pinned", "version")
    list_filter = ("status", "key_moment", "pinned", "wedding__date")
    search_fields = ("title", "location", "wedding__partner_one", "wedding__partner_two")
    list_select_related = ("wedding",)
    autocomplete_fields = ("wedding", "suppliers")
    readonly_fields = ("version", *TIMESTAMPS)

    def save_model(
        self, request: HttpRequest, obj: TimelineItem, form: ModelForm, change: bool
    ) -> None:
        bump = change and form.has_changed()
        if bump:
            _bump_version(obj)
        super().save_model(request, obj, form, change)
        if bump:
            obj.refresh_from_db(fields=["version"])
