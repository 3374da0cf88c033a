"""The writes of Web Push: a browser's subscription registered and removed, one push
built, encrypted (RFC 8291, aes128gcm), signed (VAPID, RFC 8292) and sent, and the
"I've seen it" of a notification recorded as the member's ack."""

from __future__ import annotations

import enum
import http.client
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import http_ece
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from realtime.models import Event
from realtime.services import AckResult, ack_record
from weddings.models import Wedding

from . import conf, transport
from .models import (
    MAX_AUTH_CHARS,
    MAX_ENDPOINT_CHARS,
    MAX_P256DH_CHARS,
    MAX_USER_AGENT_CHARS,
    Subscription,
)
from .selectors import wedding_id_of

logger = logging.getLogger(__name__)

# Browsers a user may have subscribed at once; a new one past this replaces the oldest.
MAX_SUBSCRIPTIONS_PER_USER = 10
# What a notification shows at most (a push message is at most 4 KiB once encrypted).
MAX_TITLE_CHARS = 100
MAX_BODY_CHARS = 240
# How long the "I've seen it" of a notification may be used (a phone off for a night).
ACK_TOKEN_MAX_AGE = 48 * 3600
ACK_TOKEN_SALT = "push.ack"  # noqa: S105 -- a signing namespace, not a secret
# The VAPID JWT's lifetime (RFC 8292 allows up to 24 h).
VAPID_JWT_SECONDS = 12 * 3600


class InvalidSubscription(ValueError):
    """What the page sent is not a push subscription we take; the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _key(field: str, value: Any, max_chars: int, size: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise InvalidSubscription(field, f"must be base64url of {size} bytes")
    try:
        raw = conf.b64url_decode(value)
    except ValueError as exc:
        raise InvalidSubscription(field, f"must be base64url of {size} bytes") from exc
    if len(raw) != size:
        raise InvalidSubscription(field, f"must be base64url of {size} bytes")
    return value.rstrip("=")


def subscription_validate(endpoint: Any, p256dh: Any, auth: Any) -> tuple[str, str, str]:
    """The endpoint and keys of a subscription, checked; ``InvalidSubscription`` if not."""
    if not isinstance(endpoint, str) or not endpoint or len(endpoint) > MAX_ENDPOINT_CHARS:
        raise InvalidSubscription("endpoint", f"must be a URL of at most {MAX_ENDPOINT_CHARS}")
    try:
        transport.url_check(endpoint)
    except transport.UrlRefused as exc:
        raise InvalidSubscription("endpoint", str(exc)) from exc
    p256dh = _key("keys.p256dh", p256dh, MAX_P256DH_CHARS, 65)
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), conf.b64url_decode(p256dh))
    except ValueError as exc:
        raise InvalidSubscription("keys.p256dh", "not a P-256 public key") from exc
    return endpoint, p256dh, _key("keys.auth", auth, MAX_AUTH_CHARS, 16)


def subscription_register(
    *, user: Any, endpoint: Any, p256dh: Any, auth: Any, user_agent: str = ""
) -> tuple[Subscription, bool]:
    """Store a browser's subscription for ``user`` (a browser already stored moves to
    them, with its new keys); (subscription, created)."""
    endpoint, p256dh, auth = subscription_validate(endpoint, p256dh, auth)
    with transaction.atomic():
        subscription, created = Subscription.objects.update_or_create(
            endpoint=endpoint,
            defaults={
                "user": user,
                "p256dh": p256dh,
                "auth": auth,
                "user_agent": user_agent[:MAX_USER_AGENT_CHARS],
            },
        )
        extra = Subscription.objects.filter(user=user).order_by("-created_at", "-pk")
        stale = list(extra.values_list("pk", flat=True)[MAX_SUBSCRIPTIONS_PER_USER:])
        if stale:
            Subscription.objects.filter(pk__in=stale).delete()
    return subscription, created


def subscription_unregister(*, user: Any, endpoint: Any) -> bool:
    """Remove one of ``user``'s browsers; whether there was one."""
    if not isinstance(endpoint, str) or len(endpoint) > MAX_ENDPOINT_CHARS:
        raise InvalidSubscription("endpoint", f"must be a URL of at most {MAX_ENDPOINT_CHARS}")
    with transaction.atomic():
        deleted, _ = Subscription.objects.filter(user=user, endpoint=endpoint).delete()
    return bool(deleted)


# --- the message ---------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _texts(event: Event) -> tuple[str, str]:
    payload = event.payload if isinstance(event.payload, dict) else {}
    if event.event == "emergency.raised":
        return f"Emergency: {payload.get('kind', '')}".strip(": "), str(payload.get("text", ""))
    if event.event == "timeline.shifted":
        minutes = payload.get("minutes", 0)
        titles = [str(i.get("title", "")) for i in payload.get("items", [])[:3]]
        return f"Timeline moved {minutes:+d} min", ", ".join(titles)
    if event.event == "alert.ack_overdue":
        return (
            "Acknowledgement overdue",
            f"{payload.get('event', 'an event')} #{payload.get('seq')} has waited "
            f"{payload.get('minutes', '?')} min for an acknowledgement",
        )
    return f"{event.event} needs your acknowledgement", ""


def ack_token(user_id: int, topic: str, seq: int) -> str:
    """The credential of a notification's "I've seen it": this user acks this event."""
    return signing.dumps({"u": user_id, "t": topic, "s": seq}, salt=ACK_TOKEN_SALT)


def message_for(event: Event, user: Any) -> dict[str, Any]:
    """The JSON a member's service worker gets for ``event`` (docs/web.md, "Push")."""
    wedding_id = wedding_id_of(event.topic)
    wedding = Wedding.objects.filter(pk=wedding_id).first()
    title, body = _texts(event)
    if wedding is not None:
        title = f"{wedding.couple_names} · {title}"
    # The event a member acknowledges: the event itself, or the one an overdue nudge is of.
    ack_seq = event.seq if event.ack_required else None
    if event.event == "alert.ack_overdue" and isinstance(event.payload.get("seq"), int):
        ack_seq = event.payload["seq"]
    return {
        "title": _clip(title, MAX_TITLE_CHARS),
        "body": _clip(body, MAX_BODY_CHARS),
        "url": reverse("web:wedding", args=[wedding_id]),
        "topic": event.topic,
        "seq": event.seq,
        "event": event.event,
        "critical": event.priority == Event.Priority.CRITICAL,
        "tag": f"{event.topic}#{event.seq}",
        "ack": ack_token(user.pk, event.topic, ack_seq) if ack_seq else None,
    }


# --- one push -------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    SENT = "sent"
    GONE = "gone"  # 404/410: the subscription is deleted
    RETRY = "retry"  # 429, 5xx, no answer: try again later
    REFUSED = "refused"  # any other answer, or a URL refused: given up
    SKIPPED = "skipped"  # push off, or the subscription no longer exists


@dataclass(frozen=True)
class PushResult:
    outcome: Outcome
    status: int | None = None
    detail: str = ""


def encrypt(message: bytes, p256dh: str, auth: str) -> bytes:
    """``message`` encrypted for a browser's keys (RFC 8291: aes128gcm, a new sender key
    and salt each time)."""
    return http_ece.encrypt(
        message,
        salt=os.urandom(16),
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=conf.b64url_decode(p256dh),
        auth_secret=conf.b64url_decode(auth),
        version="aes128gcm",
    )


def vapid_headers(endpoint: str) -> dict[str, str]:
    """The ``Authorization: vapid t=<JWT>, k=<public key>`` of a push to ``endpoint``."""
    parts = urlsplit(endpoint)
    claims = {
        "aud": f"{parts.scheme}://{parts.netloc}",
        "exp": int(time.time()) + VAPID_JWT_SECONDS,
        "sub": settings.WEB_PUSH_SUBJECT,
    }
    return conf.vapid().sign(claims)


def push_send(*, subscription_id: int, message: dict[str, Any]) -> PushResult:
    """Send one message to one browser; a 404/410 deletes its subscription."""
    if not conf.enabled():
        return PushResult(Outcome.SKIPPED, detail="push is off")
    subscription = Subscription.objects.filter(pk=subscription_id).first()
    if subscription is None:
        return PushResult(Outcome.SKIPPED, detail="no such subscription")
    body = encrypt(json.dumps(message).encode(), subscription.p256dh, subscription.auth)
    headers = {
        **vapid_headers(subscription.endpoint),
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "TTL": str(settings.WEB_PUSH_TTL),
        "Urgency": "high" if message.get("critical") else "normal",
    }
    try:
        response = transport.post(
            subscription.endpoint, body, headers, timeout=settings.WEB_PUSH_TIMEOUT
        )
    except transport.UrlRefused as exc:
        return PushResult(Outcome.REFUSED, detail=str(exc))
    except (OSError, http.client.HTTPException) as exc:
        return PushResult(Outcome.RETRY, detail=f"no answer: {exc}"[:200])
    if 200 <= response.status < 300:
        Subscription.objects.filter(pk=subscription.pk).update(last_success_at=timezone.now())
        return PushResult(Outcome.SENT, response.status)
    if response.status in (404, 410):
        Subscription.objects.filter(pk=subscription.pk).delete()
        return PushResult(Outcome.GONE, response.status)
    if response.status == 429 or response.status >= 500:
        return PushResult(Outcome.RETRY, response.status, response.body[:200])
    return PushResult(Outcome.REFUSED, response.status, response.body[:200])


# --- "I've seen it" -------------------------------------------------------------------


class AckTokenInvalid(ValueError):
    """An "I've seen it" token that is forged, expired or of a user no longer active."""


def ack_by_token(*, token: Any) -> AckResult:
    """Record the ack a notification's token stands for, as its user (the role matrix
    is checked again by ``ack_record``)."""
    if not isinstance(token, str) or len(token) > 500:
        raise AckTokenInvalid("not an acknowledgement token")
    try:
        data = signing.loads(token, salt=ACK_TOKEN_SALT, max_age=ACK_TOKEN_MAX_AGE)
    except signing.BadSignature as exc:  # SignatureExpired is one
        raise AckTokenInvalid("acknowledgement token forged or expired") from exc
    user = get_user_model().objects.filter(pk=data.get("u"), is_active=True).first()
    if user is None:
        raise AckTokenInvalid("acknowledgement token of no active user")
    return ack_record(user=user, topic=data["t"], seq=data["s"])
