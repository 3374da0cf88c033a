"""Outbound webhooks: endpoints, each one's position per topic, and its deliveries.

An ``Endpoint`` receives every stored event (``realtime.models.Event``) stored after it
was registered that passes its filters, POSTed and signed as Standard Webhooks asks.
``EndpointCursor`` is the last seq of a topic the endpoint is done with (delivered, or
skipped by the filters): events go out one at a time per topic, in seq order. A
``Delivery`` is one matching event's message and its attempts; a ``dead`` one stops its
topic for that endpoint until staff replay it (ADR 0023, docs/integration.md).
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

# Filters: an event name or a prefix of names ("emergency.*"); a topic (PROTOCOL §3) or
# a kind of topic ("wedding:", "supplier:").
_EVENT_FILTER_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?")
_TOPIC_FILTER_RE = re.compile(r"ops|(wedding|supplier):([1-9][0-9]{0,17})?")


def filter_entries(value: str) -> list[str]:
    """The entries of a filter field: separated by commas or white space."""
    return [entry for entry in re.split(r"[\s,]+", value or "") if entry]


def event_name_matches(entries: list[str], name: str) -> bool:
    """Whether an event name passes an event filter (no entries: every name)."""
    if not entries:
        return True
    return any(
        name.startswith(entry[:-1]) if entry.endswith(".*") else name == entry for entry in entries
    )


def topic_matches(entries: list[str], topic: str) -> bool:
    """Whether a topic passes a topic filter (no entries: every topic)."""
    if not entries:
        return True
    return any(
        topic.startswith(entry) if entry.endswith(":") else topic == entry for entry in entries
    )


def _validate_event_filter(value: str) -> None:
    bad = [entry for entry in filter_entries(value) if not _EVENT_FILTER_RE.fullmatch(entry)]
    if bad:
        raise ValidationError(f"not an event name or 'prefix.*': {', '.join(bad)}")


def _validate_topic_filter(value: str) -> None:
    bad = [entry for entry in filter_entries(value) if not _TOPIC_FILTER_RE.fullmatch(entry)]
    if bad:
        raise ValidationError(
            f"not a topic (ops, wedding:<id>, supplier:<id>) or a kind (wedding:, supplier:):"
            f" {', '.join(bad)}"
        )


class Endpoint(models.Model):
    """A URL that receives the matching events, signed with its secret."""

    name = models.CharField(max_length=100)
    url = models.URLField(
        "URL", max_length=500, help_text="http(s) only; redirects are not followed"
    )
    secret = models.CharField(
        max_length=100,
        blank=True,
        help_text="whsec_ followed by base64; leave empty to generate one (shown once)",
    )
    event_types = models.CharField(
        max_length=1000,
        blank=True,
        validators=[_validate_event_filter],
        help_text="event names or prefixes ('emergency.*'), separated by commas; empty: all",
    )
    topics = models.CharField(
        max_length=1000,
        blank=True,
        validators=[_validate_topic_filter],
        help_text="topics ('wedding:12', 'ops') or kinds ('wedding:'), separated by commas;"
        " empty: all",
    )
    active = models.BooleanField(default=True)
    # Events with a larger id are the endpoint's (those stored after it was registered).
    since_event_id = models.BigIntegerField(default=0, editable=False)
    # One delivery run at a time per endpoint: a lease, taken by a conditional UPDATE.
    lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    lease_owner = models.CharField(max_length=32, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("name", "id")

    def __str__(self) -> str:
        return f"{self.name} ({self.url})"

    def event_filter(self) -> list[str]:
        return filter_entries(self.event_types)

    def topic_filter(self) -> list[str]:
        return filter_entries(self.topics)


class EndpointCursor(models.Model):
    """The last seq of a topic an endpoint is done with (delivered or filtered out)."""

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="cursors")
    topic = models.CharField(max_length=100)
    last_seq = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "endpoint cursor"
        constraints = [
            models.UniqueConstraint(fields=("endpoint", "topic"), name="webhooks_cursor_topic"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint_id}: {self.topic} @ {self.last_seq}"


class Delivery(models.Model):
    """One event's message to one endpoint: its body, fixed at the first attempt, and
    where its attempts stand."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        FAILED = "failed", "Failed (will retry)"
        DELIVERED = "delivered", "Delivered"
        DEAD = "dead", "Dead (replay to resume)"

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    topic = models.CharField(max_length=100)
    seq = models.BigIntegerField()
    event = models.CharField(max_length=64)
    # Standard Webhooks' webhook-id: one per message, the same on every attempt.
    message_id = models.CharField(max_length=40, unique=True)
    body = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ("endpoint", "topic", "seq")
        constraints = [
            models.UniqueConstraint(
                fields=("endpoint", "topic", "seq"), name="webhooks_delivery_event"
            ),
        ]
        indexes = [models.Index(fields=("status", "created_at"), name="webhooks_delivery_status")]

    def __str__(self) -> str:
        return f"{self.topic}#{self.seq} {self.event} → endpoint {self.endpoint_id}"
