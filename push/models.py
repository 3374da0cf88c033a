"""A browser's push subscription (the Push API's ``PushSubscription``): where its push
service takes messages for it, and the keys its messages are encrypted for (RFC 8291).

One row per browser profile and device: the push service's URL is unique, so a browser
that a second member signs in on moves to them. A push service's 404 or 410 (the browser
unsubscribed, or the subscription expired) deletes the row.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

# Bounds of what a browser sends (docs/web.md, "Push"): push service URLs are about 200
# (FCM) to 400 (Mozilla) characters; p256dh is a 65-byte P-256 point and auth 16 bytes,
# both base64url (87 and 22 characters without padding).
MAX_ENDPOINT_CHARS = 1000
MAX_P256DH_CHARS = 88
MAX_AUTH_CHARS = 24
MAX_USER_AGENT_CHARS = 300


class Subscription(models.Model):
    """One browser of one user that asked for pushes."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="push_subscriptions"
    )
    endpoint = models.URLField(max_length=MAX_ENDPOINT_CHARS, unique=True)
    p256dh = models.CharField("P-256 public key", max_length=MAX_P256DH_CHARS)
    auth = models.CharField("auth secret", max_length=MAX_AUTH_CHARS)
    user_agent = models.CharField(max_length=MAX_USER_AGENT_CHARS, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "push subscription"
        ordering = ("user", "-created_at")

    def __str__(self) -> str:
        return f"{self.user} · {self.user_agent[:60] or self.endpoint[:60]}"
