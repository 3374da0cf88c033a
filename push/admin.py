"""Admin of the push subscriptions: which members' browsers take pushes, and when one
last took one (the keys are not shown: they are the browser's)."""

from __future__ import annotations

from django.contrib import admin

from push.models import Subscription


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ("user", "user_agent", "created_at", "last_success_at")
    list_select_related = ("user",)
    search_fields = ("user__username", "user__email", "user_agent")
    readonly_fields = ("user", "endpoint", "user_agent", "created_at", "last_success_at")
    exclude = ("p256dh", "auth")

    def has_add_permission(self, request: object) -> bool:
        return False  # only a browser can make one
