"""API keys: server-to-server credentials of the platform's backend (ADR 0024).

A key is ``wsk_<prefix>_<secret>``: a public prefix (12 hex digits, the row's name in
logs, the admin and the audit) and 256 random bits. Only the SHA-256 of the whole key is
stored: the secret is random, not a password, so a fast hash is as safe as a slow one
and costs microseconds per request (GitHub and Stripe keys work the same way).

A key authenticates ``Authorization: Bearer wsk_…`` on three routes of the HTTP API
only: the publish (``POST /api/weddings/<id>/events``), the history (``GET`` of it) and
the snapshot (``GET /api/weddings/<id>/``); anywhere else, and on the WebSocket, it is
refused. On those routes the key acts as staff's column of the role matrix, narrowed by
its scope: the weddings (``wedding_ids``, ``topics``), the event types, read and/or
publish. It acts through a service user of its own (``ApiKey.user``), so its events name
that user as their actor and its idempotency keys are its own.

The key's row is read through the two-tier cache (``api_key:<prefix>``); a save or
revocation deletes the entry in every process at once (``core.cache``'s cross-process
invalidation), so a revoked key is refused on its next request. Every use, allowed or
refused, leaves an ``ApiKeyUse`` row.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from core.cache import get_cache
from core.db import in_db_thread
from core.http import ApiError, json_error
from weddings.caching import access_ttl, auser_cached, user_cached

from .catalogue import CATALOGUE
from .errors import role_forbidden
from .models import ApiKey, ApiKeyUse

logger = logging.getLogger(__name__)

KEY_MARK = "wsk_"
_KEY_RE = re.compile(r"wsk_(?P<prefix>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})")
# The routes (URL names) a key may call; every other /api/ view refuses it (403).
KEY_ROUTES = frozenset({"wedding-events", "wedding-snapshot"})
TOPIC_RE = re.compile(r"wedding:(\d+|\*)")
# last_used_at is written at most this often per key (the audit rows are exact).
_LAST_USED_EVERY = dt.timedelta(seconds=60)


class ApiKeyRefused(Exception):
    """A credential shaped as an API key was refused; ``key_id`` when the row is known."""

    def __init__(self, message: str, outcome: str, key_id: int | None = None) -> None:
        super().__init__(message)
        self.outcome, self.key_id = outcome, key_id


@dataclass(frozen=True)
class KeyGrant:
    """What an accepted key may do, from its (cached) row."""

    id: int
    prefix: str
    name: str
    user_id: int
    wedding_ids: frozenset[int]
    all_weddings: bool
    event_types: tuple[str, ...]
    can_read: bool
    can_publish: bool

    def covers_wedding(self, wedding_id: int) -> bool:
        return self.all_weddings or wedding_id in self.wedding_ids

    def covers_event(self, event: str) -> bool:
        return any(event_type_matches(pattern, event) for pattern in self.event_types)

    @property
    def actor(self) -> dict[str, str]:
        """Who published, as the publish answer says it."""
        return {"api_key": self.prefix, "name": self.name}


def event_type_matches(pattern: str, event: str) -> bool:
    """``*`` matches every event, ``timeline.*`` every event under ``timeline.``."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event.startswith(pattern[:-1])
    return event == pattern


def event_types_validate(patterns: Iterable[str]) -> list[str]:
    """The patterns, each a catalogue event, ``prefix.*`` matching one, or ``*``;
    ValueError naming the first that matches nothing."""
    out = []
    for pattern in patterns:
        if not any(event_type_matches(pattern, name) for name in CATALOGUE):
            raise ValueError(f"{pattern!r} matches no event of the catalogue")
        out.append(pattern)
    return out


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _cache_key(prefix: str) -> str:
    return f"api_key:{prefix}"


# --- writes (the admin) ---------------------------------------------------------------------


def api_key_prepare(*, key: ApiKey, created_by: Any) -> str:
    """Give an unsaved ``key`` its prefix, hash and service user; returns the full key,
    the only time it exists (the admin shows it once)."""
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    full = f"{KEY_MARK}{prefix}_{secret}"
    user = get_user_model()(username=f"apikey.{prefix}", first_name=key.name[:150])
    user.set_unusable_password()
    user.save()
    key.prefix, key.secret_hash, key.user = prefix, key_hash(full), user
    key.created_by = created_by if getattr(created_by, "pk", None) else None
    return full


def api_key_invalidate(prefix: str) -> None:
    """Drop the cached row in every process, now and after the current commit."""
    cache, name = get_cache(), _cache_key(prefix)
    cache.delete(name)
    transaction.on_commit(lambda: cache.delete(name))


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke ``key``: refused on its next request, in every process."""
    with transaction.atomic():
        if key.revoked_at is None:
            key.revoked_at = timezone.now()
            ApiKey.objects.filter(pk=key.pk).update(revoked_at=key.revoked_at)
        api_key_invalidate(key.prefix)
    return key


def api_key_use_record(
    key_id: int,
    request: HttpRequest,
    status: int,
    outcome: str,
    topic: str = "",
    seq: int | None = None,
) -> None:
    """The audit row of one use, and ``last_used_at`` (at most once a minute). A database
    that cannot take it is logged, not the request's failure."""
    now = timezone.now()
    try:
        ApiKeyUse.objects.create(
            key_id=key_id,
            at=now,
            method=(request.method or "")[:8],
            path=request.path[:200],
            status=status,
            outcome=outcome[:32],
            topic=topic,
            seq=seq,
        )
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - _LAST_USED_EVERY)
        ApiKey.objects.filter(stale, pk=key_id).update(last_used_at=now)
    except DatabaseError:
        logger.warning("api key %s: the use could not be recorded", key_id, exc_info=True)


# --- recognition ------------------------------------------------------------------------------


def api_key_row_load(prefix: str) -> dict[str, Any] | None:
    """What a request needs of the key's row (plain data for the cache), None if none."""
    row = ApiKey.objects.filter(prefix=prefix).first()
    if row is None:
        return None
    weddings = set(row.wedding_ids)
    topics = set(row.topics)
    weddings.update(int(t.split(":")[1]) for t in topics if t != "wedding:*")
    return {
        "id": row.pk,
        "name": row.name,
        "hash": row.secret_hash,
        "user_id": row.user_id,
        "expires": row.expires_at.timestamp() if row.expires_at else None,
        "revoked": row.revoked_at is not None,
        "weddings": sorted(weddings),
        "all_weddings": "wedding:*" in topics,
        "event_types": list(row.event_types),
        "read": row.can_read,
        "publish": row.can_publish,
    }


def _prefix(credential: str) -> tuple[str, str]:
    match = _KEY_RE.fullmatch(credential)
    if match is None:
        raise ApiKeyRefused("the API key is invalid", "invalid")
    return match["prefix"], credential


def _grant(prefix: str, credential: str, row: dict[str, Any] | None) -> KeyGrant:
    if row is None or not constant_time_compare(row["hash"], key_hash(credential)):
        raise ApiKeyRefused("the API key is invalid", "invalid")
    if row["revoked"]:
        raise ApiKeyRefused("the API key was revoked", "revoked", row["id"])
    if row["expires"] is not None and time.time() >= row["expires"]:
        raise ApiKeyRefused("the API key has expired", "expired", row["id"])
    return KeyGrant(
        id=row["id"],
        prefix=prefix,
        name=row["name"],
        user_id=row["user_id"],
        wedding_ids=frozenset(row["weddings"]),
        all_weddings=row["all_weddings"],
        event_types=tuple(row["event_types"]),
        can_read=row["read"],
        can_publish=row["publish"],
    )


def api_key_authenticate(credential: str) -> KeyGrant:
    """The grant of a key; ApiKeyRefused when it is unknown, wrong, revoked or expired."""
    prefix, credential = _prefix(credential)
    row = get_cache().get_or_load(
        _cache_key(prefix), lambda: api_key_row_load(prefix), ttl=access_ttl()
    )
    return _grant(prefix, credential, row)


async def aapi_key_authenticate(credential: str) -> KeyGrant:
    """``api_key_authenticate`` on the event loop: a cached row costs no thread."""
    prefix, credential = _prefix(credential)
    row = await get_cache().aget_or_load(
        _cache_key(prefix), lambda: in_db_thread(api_key_row_load)(prefix), ttl=access_ttl()
    )
    return _grant(prefix, credential, row)


def is_api_key(credential: str) -> bool:
    return credential.startswith(KEY_MARK)


def _acting(user: Any) -> Any:
    """The key's service user as the publish and the history see it: staff's column of
    the matrix (in memory only; the row is staff of nothing), narrowed by the scope."""
    acting = copy.copy(user)
    acting.is_staff = True
    return acting


def _refusal(request: HttpRequest, exc: ApiKeyRefused) -> HttpResponse:
    if exc.key_id is not None:
        api_key_use_record(exc.key_id, request, 401, exc.outcome)
    return json_error("unauthenticated", str(exc), 401)


def _route_refusal(request: HttpRequest, grant: KeyGrant) -> HttpResponse | None:
    match = request.resolver_match
    if match is not None and match.url_name in KEY_ROUTES:
        return None
    api_key_use_record(grant.id, request, 403, "forbidden")
    return json_error("forbidden", "an API key may only publish and read a wedding's events", 403)


def request_authenticate(request: HttpRequest, credential: str) -> HttpResponse | None:
    """``api_authenticate`` for a bearer API key: sets ``request.user`` (the acting
    service user) and ``request.api_key`` (the grant), or returns the refusal."""
    try:
        grant = api_key_authenticate(credential)
    except ApiKeyRefused as exc:
        return _refusal(request, exc)
    if (refused := _route_refusal(request, grant)) is not None:
        return refused
    user = user_cached(grant.user_id)
    if user is None or not user.is_active:
        return json_error("unauthenticated", "the API key's service user is gone", 401)
    request.user, request.api_key = _acting(user), grant  # type: ignore[attr-defined]
    return None


async def arequest_authenticate(request: HttpRequest, credential: str) -> HttpResponse | None:
    """``request_authenticate`` for async views."""
    try:
        grant = await aapi_key_authenticate(credential)
    except ApiKeyRefused as exc:
        if exc.key_id is None:
            return _refusal(request, exc)
        return await in_db_thread(_refusal)(request, exc)
    if (refused := await in_db_thread(_route_refusal)(request, grant)) is not None:
        return refused
    user = await auser_cached(grant.user_id)
    if user is None or not user.is_active:
        return json_error("unauthenticated", "the API key's service user is gone", 401)
    request.user, request.api_key = _acting(user), grant  # type: ignore[attr-defined]
    return None


def request_key(request: HttpRequest) -> KeyGrant | None:
    """The grant of a request authenticated by an API key, else None."""
    return getattr(request, "api_key", None)


# --- what a key may do ------------------------------------------------------------------------


def require(grant: KeyGrant, what: str) -> None:
    """403 ``forbidden`` unless the key may ``read`` or ``publish``."""
    if not (grant.can_read if what == "read" else grant.can_publish):
        raise role_forbidden(f"this API key may not {what}")


def require_event(grant: KeyGrant, event: str) -> None:
    """403 ``forbidden`` for an event type outside the key's scope."""
    if not grant.covers_event(event):
        raise role_forbidden(f"this API key may not publish {event!r}")


def _outcome(request: HttpRequest, response: HttpResponse) -> tuple[str, str, int | None]:
    if request.method != "POST" or response.status_code not in (200, 201):
        return "ok", "", None
    body = orjson.loads(response.content)
    return ("duplicate" if body.get("duplicate") else "ok"), body["topic"], body["seq"]


def audited(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Record every use of a key on ``view`` (under ``api_view``): the outcome, and the
    topic and seq of a publish."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        grant = request_key(request)
        if grant is None:
            return view(request, *args, **kwargs)
        try:
            response = view(request, *args, **kwargs)
        except ApiError as exc:
            api_key_use_record(grant.id, request, exc.status, exc.code)
            raise
        outcome, topic, seq = _outcome(request, response)
        api_key_use_record(grant.id, request, response.status_code, outcome, topic, seq)
        return response

    return wrapper


def aaudited(view: Callable[..., Any]) -> Callable[..., Any]:
    """``audited`` for async views (the record is written in a database thread)."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        grant = request_key(request)
        if grant is None:
            return await view(request, *args, **kwargs)
        record = in_db_thread(api_key_use_record)
        try:
            response = await view(request, *args, **kwargs)
        except ApiError as exc:
            await record(grant.id, request, exc.status, exc.code)
            raise
        await record(grant.id, request, response.status_code, "ok")
        return response

    return wrapper
