"""The event log: per-topic gapless sequence numbers, stored events, idempotency keys, acks.

Every event a client may receive is a row of ``Event`` before it is broadcast
(PROTOCOL §7). ``TopicCursor`` holds the last seq handed out per topic; it is never
deleted, so pruning old events never makes a topic's seq start again. Writes go through
``realtime.services``; reads through ``realtime.selectors``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.models import SwitchChange


class TopicCursor(models.Model):
    """The last seq allocated on a topic; its row lock serialises publishers of the topic."""

    topic = models.CharField(max_length=100, primary_key=True)
    last_seq = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "topic cursor"

    def __str__(self) -> str:
        return f"{self.topic} @ {self.last_seq}"


class Event(models.Model):
    """One stored event of a topic, numbered by ``seq`` (1, 2, 3 ... per topic, no gap)."""

    class Priority(models.TextChoices):
        NORMAL = "normal", "Normal"
        CRITICAL = "critical", "Critical"

    topic = models.CharField(max_length=100)
    seq = models.BigIntegerField()
    event = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    actor_supplier_id = models.BigIntegerField(null=True, blank=True)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    ack_required = models.BooleanField(default=False)
    idempotency_key = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("topic", "seq")
        constraints = [
            models.UniqueConstraint(fields=("topic", "seq"), name="realtime_event_topic_seq"),
        ]
        indexes = [
            models.Index(fields=("topic", "created_at"), name="realtime_event_topic_time"),
            # Retention by age scans all topics at once.
            models.Index(fields=("created_at",), name="realtime_event_created"),
        ]

    def __str__(self) -> str:
        return f"{self.topic}#{self.seq} {self.event}"


class IdempotencyKey(models.Model):
    """A publish's idempotency key: the same user and key within 24 h give the first seq."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=64)
    topic = models.CharField(max_length=100)
    seq = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)

    class Meta:
        verbose_name = "idempotency key"
        constraints = [
            models.UniqueConstraint(fields=("user", "key"), name="realtime_idempotency_user_key"),
        ]

    def __str__(self) -> str:
        return f"{self.key} → {self.topic}#{self.seq}"


class Ack(models.Model):
    """A user's confirmation that they saw an event (PROTOCOL §4 ack)."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="acks")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("created_at", "id")
        constraints = [
            models.UniqueConstraint(fields=("event", "user"), name="realtime_ack_event_user"),
        ]

    def __str__(self) -> str:
        return f"ack {self.event} by user {self.user_id}"


class ReadOnlyModeChange(SwitchChange):
    """One switch of read-only (maintenance) mode on or off: an append-only audit log.

    While the latest row says on, publishes and acks are refused with ``unavailable``
    and the reason; reads, replays and live delivery of stored events go on.
    """

    switch_name = "read-only mode"

    class Meta(SwitchChange.Meta):
        verbose_name = "read-only mode change"


class TokenVersion(models.Model):
    """A user's realtime token version: part of every token's fingerprint.

    "Sign out everywhere" (``realtime.tokens.tokens_revoke_all``) bumps it, which makes
    every token issued before invalid. No row means version 0, whose fingerprint is the
    one tokens had before versions existed, so those tokens stay valid.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="realtime_token_version",
    )
    version = models.PositiveIntegerField(default=0)
    changed_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "token version"

    def __str__(self) -> str:
        return f"tokens of user {self.user_id}: version {self.version}"


class ConnectTicket(models.Model):
    """A connect ticket not used yet, on the embedded default (with ``REDIS_URL`` tickets
    live in Redis): ``realtime.tickets``, PROTOCOL §2 (v1.1).

    Keyed by the SHA-256 of the ticket, never the ticket itself, so a row (a backup, a
    query log) is no credential. Using a ticket deletes its row in the same statement
    that reads it; rows nobody used are deleted once expired, when the next is issued.
    """

    digest = models.CharField(max_length=64, primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # The token version and password fingerprint the ticket was bought with (as a token's).
    version = models.PositiveIntegerField()
    fingerprint = models.CharField(max_length=32)
    expires = models.FloatField(db_index=True)  # Unix seconds

    class Meta:
        verbose_name = "connect ticket"

    def __str__(self) -> str:
        return f"connect ticket of user {self.user_id}"


class StreamEpoch(models.Model):
    """The name of the event log's present history: one row for the deployment
    (PROTOCOL §4, v1.1; ``realtime.epoch``).

    Seqs say where a client is within a history; the epoch says which history. It is an
    opaque random string, seeded by the migration that made this table, and replaced
    (``python manage.py stream_epoch --bump``) whenever the log's history may have
    diverged from what clients hold: after a point-in-time restore reused seqs. A client
    that resumes with another epoch gets ``recovered: false`` and reloads its snapshot.
    A restore brings this row back as it was too, so the bump after it is what tells
    the two histories apart; ``previous``, ``changed_at`` and ``reason`` say what the
    last bump did (the log line of each bump is the longer record: a restore also
    rewinds this row).
    """

    ROW = 1  # the one row's primary key

    id = models.PositiveSmallIntegerField(primary_key=True, default=ROW, editable=False)
    epoch = models.CharField(max_length=32)
    previous = models.CharField(max_length=32, blank=True, default="")
    changed_at = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        verbose_name = "stream epoch"
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="realtime_stream_epoch_one_row"),
        ]

    def __str__(self) -> str:
        return f"stream epoch {self.epoch}"


class ExternalIdentity(models.Model):
    """A user's identity at the platform's sign-in (Supabase Auth): the issuer and subject
    of the JWTs that authenticate them (``realtime.jwt_auth``, PROTOCOL §2 v1.1).

    Stored the first time a JWT's ``email`` matches exactly one active user; from then on
    the subject alone finds the user, whatever the email becomes on either side. One
    subject per user and issuer: a second one is linked by an administrator here, never
    by email. Deleting a row unlinks the account (the next JWT is matched by email again).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="realtime_external_identities",
    )
    # The JWT's ``iss`` (empty when it has none) and ``sub``, as the platform sends them.
    issuer = models.CharField(max_length=255, blank=True, default="")
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "external identity"
        verbose_name_plural = "external identities"
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "subject"], name="realtime_external_identity_subject"
            ),
            models.UniqueConstraint(
                fields=["user", "issuer"], name="realtime_external_identity_one_per_issuer"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer or 'the platform'} (user {self.user_id})"


class ApiKey(models.Model):
    """A server-to-server credential of the platform's backend (ADR 0024): named, scoped,
    expiring, revocable. Shown once as ``wsk_<prefix>_<secret>``; only the SHA-256 of the
    whole key is stored (``realtime.api_keys``).

    Each key acts through a service user of its own (``user``: no password, a member of
    nothing): the events it publishes name that user as their actor, its idempotency keys
    are its own. The scope narrows what the key may do; it never widens it.
    """

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="realtime_api_key",
        editable=False,
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Scope, nothing by default: a wedding is in it when listed in ``wedding_ids`` or its
    # topic in ``topics`` (``wedding:<id>``, or ``wedding:*`` for every wedding). Event
    # types: catalogue names, ``prefix.*`` or ``*``; empty: none.
    wedding_ids = models.JSONField(default=list, blank=True)
    topics = models.JSONField(default=list, blank=True)
    event_types = models.JSONField(default=list, blank=True)
    can_read = models.BooleanField(default=False)
    can_publish = models.BooleanField(default=False)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} (wsk_{self.prefix}_…)"


class ApiKeyUse(models.Model):
    """One use of an API key, allowed or refused: the audit trail (ADR 0024)."""

    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="uses")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=200)
    status = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=32)  # "ok", "duplicate" or the error code
    topic = models.CharField(max_length=64, blank=True, default="")
    seq = models.BigIntegerField(null=True, blank=True)

    class Meta:
        verbose_name = "API key use"
        indexes = [models.Index(fields=["key", "-at"], name="realtime_apikeyuse_key_at")]

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.status} {self.outcome}"
