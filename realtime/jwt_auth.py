"""Platform sign-in (PROTOCOL §2, v1.1; ADR 0021): JWTs issued by the platform's auth
(Supabase Auth) accepted wherever a realtime token is.

``realtime.tokens`` sends a credential here when it is shaped as a JWT (three base64url
segments, the first a JSON header with ``alg``) and a key source is configured; anything
else stays on the realtime token path. What is checked, in order:

* the algorithm, from a fixed list per key source: HS256 with ``REALTIME_JWT_SECRET``
  only; RS256 and ES256 with a key of ``REALTIME_JWT_JWKS_URL`` only, and only the
  algorithm of that key. Never ``none``, never HS* with a public key;
* the signature, then ``exp`` and ``nbf`` (``REALTIME_JWT_LEEWAY`` seconds of skew),
  ``iat`` (required, not in the future), ``aud`` (``REALTIME_JWT_AUDIENCE``), ``iss``
  (``REALTIME_JWT_ISSUER``, when set) and ``sub`` (required);
* the user: the ``ExternalIdentity`` of (iss, sub); on first sight, the one active user
  whose email is the JWT's ``email`` (compared without case), unless the JWT says the
  email is not verified, the user is staff, or already has an identity at this issuer
  (an administrator links those). Then the subject is stored (``external_identity_link``).

The revocation rules (deactivation, "sign out everywhere" through ``iat``) are applied
by ``realtime.tokens``, which owns them for every credential.

The keys of the JWKS are kept in process memory (``JwksCache``) for
``REALTIME_JWT_JWKS_TTL`` seconds, fetched again at once for a key id they lack (at most
every ``JWKS_REFETCH_INTERVAL`` seconds, so a stream of made-up key ids cannot hammer the
platform), and kept in use for ``JWKS_STALE_MAX`` seconds past their time while the URL
cannot be reached. Async callers fetch in a worker thread, never on the event loop; the
user is looked up through the two-tier cache, a miss in a realtime database thread.

JWTs are credentials: nothing here logs one, nor any claim but the refusal's code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from jwt.exceptions import InvalidSubjectError

from core.cache import get_cache
from core.db import in_db_thread
from weddings.caching import access_ttl

from .models import ExternalIdentity, TokenVersion

logger = logging.getLogger(__name__)

HS_ALGORITHMS = ("HS256",)
JWKS_ALGORITHMS = ("RS256", "ES256")
# A Supabase access token with metadata is 1 to 2 kB; far longer is refused unread.
MAX_JWT_LEN = 8192
_MAX_HEADER_LEN = 1024
# The shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash's 256 bits).
MIN_SECRET_BYTES = 32
# The JWKS: how long one fetch may take, how large the answer may be, how often a key id
# it lacks (or a failed fetch) may cause another fetch, and how long keys stay in use past
# their time while the URL cannot be reached (the platform's keys rarely change; a
# wedding-day outage of its endpoint should not sign everyone out).
JWKS_TIMEOUT = 5.0
JWKS_MAX_BYTES = 1 << 20
JWKS_REFETCH_INTERVAL = 10.0
JWKS_STALE_MAX = 3600.0


class JwtRefused(Exception):
    """A JWT was refused; ``code`` is stable (``realtime.tokens`` turns it into the
    TokenError clients see), the message says why in words."""

    code = "token_invalid"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


def _monotonic() -> float:
    """The JWKS cache's clock; a function of its own so tests can move it."""
    return time.monotonic()


# --- configuration and shape --------------------------------------------------------------


def jwt_configured() -> bool:
    """Whether platform JWTs are accepted at all (a secret or a JWKS URL is set)."""
    return bool(settings.REALTIME_JWT_SECRET or settings.REALTIME_JWT_JWKS_URL)


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _header(token: str) -> dict[str, Any] | None:
    """The JOSE header of a JWT-shaped credential, or None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or len(parts[0]) > _MAX_HEADER_LEN:
        return None
    try:
        header = json.loads(_b64decode(parts[0]))
    except ValueError:  # not base64, not UTF-8, not JSON
        return None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        return None
    return header


def is_jwt(token: Any) -> bool:
    """True for a credential to be checked here: JWTs are configured and it is shaped as
    one. A realtime token (``payload.signature``) never is."""
    return isinstance(token, str) and jwt_configured() and _header(token) is not None


# --- verification -------------------------------------------------------------------------


_PYJWT_REFUSALS: tuple[tuple[type[Exception], str, str], ...] = (
    # (PyJWT's error, our code, the message), most specific first.
    (jwt.ExpiredSignatureError, "token_expired", "The token has expired."),
    (jwt.ImmatureSignatureError, "token_invalid", "The token is not valid yet."),
    (jwt.InvalidAudienceError, "token_invalid", "The token's audience is not accepted."),
    (jwt.InvalidIssuerError, "token_invalid", "The token's issuer is not accepted."),
    (jwt.InvalidAlgorithmError, "token_invalid", "The token's algorithm is not accepted."),
    (jwt.InvalidSignatureError, "token_invalid", "The token's signature does not verify."),
    (jwt.InvalidIssuedAtError, "token_invalid", "The token's issue time (iat) is malformed."),
    (InvalidSubjectError, "token_invalid", "The token's subject (sub) is malformed."),
)


def _decode(token: str, key: Any, algorithm: str) -> dict[str, Any]:
    issuer = settings.REALTIME_JWT_ISSUER or None
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=settings.REALTIME_JWT_AUDIENCE,
            issuer=issuer,
            leeway=settings.REALTIME_JWT_LEEWAY,
            options={"require": ["exp", "iat", "sub", "aud"]},
        )
    except jwt.MissingRequiredClaimError as exc:
        raise JwtRefused(f"The token has no '{exc.claim}' claim.") from None
    except jwt.InvalidTokenError as exc:
        for error, code, message in _PYJWT_REFUSALS:
            if isinstance(exc, error):
                raise JwtRefused(message, code) from None
        raise JwtRefused("The token is malformed.") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise JwtRefused("The token's subject (sub) is malformed.")
    if not isinstance(claims.get("iss", ""), str) or len(claims.get("iss", "")) > 255:
        raise JwtRefused("The token's issuer is not accepted.")
    return claims


def _algorithm(token: str) -> tuple[str, dict[str, Any]]:
    """The header's algorithm when one of the configured key sources accepts it."""
    if len(token) > MAX_JWT_LEN:
        raise JwtRefused("The token is too long.")
    header = _header(token)
    if header is None:
        raise JwtRefused("The token is malformed.")
    alg = header["alg"]
    if alg in HS_ALGORITHMS and settings.REALTIME_JWT_SECRET:
        return alg, header
    if alg in JWKS_ALGORITHMS and settings.REALTIME_JWT_JWKS_URL:
        return alg, header
    raise JwtRefused("The token's algorithm is not accepted.")


def _kid(header: dict[str, Any]) -> str:
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwtRefused("The token names no signing key (kid).")
    return kid


def jwt_verify(token: str) -> dict[str, Any]:
    """The claims of a platform JWT whose signature and claims check out; JwtRefused
    otherwise. May fetch the JWKS: for sync callers (views run in threads)."""
    alg, header = _algorithm(token)
    if alg in HS_ALGORITHMS:
        return _decode(token, settings.REALTIME_JWT_SECRET, alg)
    key = jwks_cache().key(_kid(header))
    return _decode(token, key.key, key.algorithm_name)


async def ajwt_verify(token: str) -> dict[str, Any]:
    """``jwt_verify`` for async callers: keys in memory cost no thread; a JWKS fetch runs
    in a worker thread."""
    alg, header = _algorithm(token)
    if alg in HS_ALGORITHMS:
        return _decode(token, settings.REALTIME_JWT_SECRET, alg)
    key = await jwks_cache().akey(_kid(header))
    return _decode(token, key.key, key.algorithm_name)


def jwt_expires_at(token: str) -> int:
    """The ``exp`` of a JWT that authentication has already accepted (the cap of tokens
    and tickets bought with it)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return int(claims["exp"])


# --- the JWKS -----------------------------------------------------------------------------


def _usable_key(data: Any) -> jwt.PyJWK | None:
    """A signing key of the JWKS we accept, or None (skipped): RSA for RS256, P-256 for
    ES256, with a ``kid``, its ``alg`` (when given) matching its type, not for encryption."""
    if not isinstance(data, dict) or not isinstance(data.get("kid"), str):
        return None
    if data.get("use", "sig") != "sig":
        return None
    kty, crv = data.get("kty"), data.get("crv")
    alg = "RS256" if kty == "RSA" else "ES256" if (kty, crv) == ("EC", "P-256") else None
    if alg is None or data.get("alg", alg) != alg:
        return None
    try:
        return jwt.PyJWK(data, algorithm=alg)
    except jwt.PyJWTError:
        return None


@dataclass(frozen=True)
class _KeySet:
    """One answer of the JWKS URL (or none yet), replaced whole on every fetch."""

    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float | None = None  # the last successful fetch (monotonic)
    attempted_at: float | None = None  # the last fetch, successful or not
    failed: bool = False  # whether the last fetch failed


class JwksCache:
    """The signing keys of one JWKS URL, in process memory (see the module docstring)."""

    def __init__(self, url: str, ttl: float) -> None:
        self.url = url
        self.ttl = ttl
        self._set = _KeySet()
        self._fetching = threading.Lock()  # one fetch at a time, in whatever thread

    def _wants_fetch(self, kid: str, now: float) -> bool:
        current = self._set
        if current.attempted_at is not None and now - current.attempted_at < JWKS_REFETCH_INTERVAL:
            return False
        if kid not in current.keys:
            return True
        return current.fetched_at is None or now - current.fetched_at >= self.ttl

    def _lookup(self, kid: str, now: float) -> jwt.PyJWK:
        current = self._set
        key = current.keys.get(kid)
        if key is not None:
            assert current.fetched_at is not None
            if now - current.fetched_at < self.ttl + JWKS_STALE_MAX:
                return key
        if current.failed:
            raise JwtRefused(
                "The platform's signing keys cannot be fetched right now.", "jwt_keys_unavailable"
            )
        raise JwtRefused("The token's signing key (kid) is unknown.")

    def key(self, kid: str) -> jwt.PyJWK:
        """The key named ``kid``, fetching the JWKS when due (blocks: call in a thread)."""
        if self._wants_fetch(kid, _monotonic()):
            with self._fetching:
                now = _monotonic()
                if self._wants_fetch(kid, now):  # another thread may have fetched meanwhile
                    self._refresh(now)
        return self._lookup(kid, _monotonic())

    async def akey(self, kid: str) -> jwt.PyJWK:
        """``key`` for async callers: from memory when no fetch is due, else in a thread."""
        if self._wants_fetch(kid, _monotonic()):
            return await asyncio.to_thread(self.key, kid)
        return self._lookup(kid, _monotonic())

    def _refresh(self, now: float) -> None:
        current = self._set
        try:
            keys = self._fetch()
        except Exception as exc:  # unreachable, an error status, not a JWKS: keep the old keys
            logger.warning("platform JWKS %s could not be fetched (%s)", self.url, exc)
            self._set = _KeySet(current.keys, current.fetched_at, now, failed=True)
            return
        self._set = _KeySet(keys, now, now, failed=False)

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError("the JWKS URL is not http(s)")
        # The scheme is checked just above.
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})  # noqa: S310
        with _OPENER.open(request, timeout=JWKS_TIMEOUT) as response:
            body = response.read(JWKS_MAX_BYTES + 1)
        if len(body) > JWKS_MAX_BYTES:
            raise ValueError("the JWKS is too large")
        document = json.loads(body)
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError("the answer is not a JWKS")
        keys = {}
        for entry in entries:
            if (key := _usable_key(entry)) is not None:
                keys[entry["kid"]] = key
        return keys


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: it could lead an https URL to plain http, or elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
_caches: dict[tuple[str, float], JwksCache] = {}
_caches_lock = threading.Lock()


def jwks_cache() -> JwksCache:
    """The process's key cache for the configured JWKS URL and lifetime."""
    wanted = (settings.REALTIME_JWT_JWKS_URL, float(settings.REALTIME_JWT_JWKS_TTL))
    with _caches_lock:
        cache = _caches.get(wanted)
        if cache is None:
            cache = _caches[wanted] = JwksCache(*wanted)
        return cache


# --- the user -----------------------------------------------------------------------------


def subject_key(issuer: str, subject: str) -> str:
    """The cache key of the user id an (issuer, subject) resolves to."""
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:32]
    return f"jwt_subject:{digest}"


def _email_unverified(claims: dict[str, Any]) -> bool:
    """Whether the JWT says its email is not verified (top level, or Supabase's
    ``user_metadata``); absent means the platform does not say, and is trusted."""
    metadata = claims.get("user_metadata")
    flags = [claims.get("email_verified")]
    if isinstance(metadata, dict):
        flags.append(metadata.get("email_verified"))
    return any(flag is False for flag in flags)


def external_identity_link(*, user_id: int, issuer: str, subject: str) -> ExternalIdentity:
    """Store that (issuer, subject) signs in ``user_id``; of concurrent first sights of
    one subject, one row wins and the others read it."""
    with transaction.atomic():
        identity, _ = ExternalIdentity.objects.get_or_create(
            issuer=issuer, subject=subject, defaults={"user_id": user_id}
        )
    return identity


def jwt_user_id_load(issuer: str, subject: str, email: Any, unverified: bool) -> int:
    """The id of the user (issuer, subject) stands for, linking it by email on first
    sight; JwtRefused when there is none (runs in a database thread)."""
    linked = (
        ExternalIdentity.objects.filter(issuer=issuer, subject=subject)
        .values_list("user_id", flat=True)
        .first()
    )
    if linked is not None:
        return int(linked)
    if not isinstance(email, str) or not email or unverified:
        raise JwtRefused("No user matches the token's subject or email.", "user_unknown")
    users = list(
        get_user_model()
        ._default_manager.filter(email__iexact=email, is_active=True)
        .values_list("pk", "is_staff", "is_superuser")[:2]
    )
    if not users:
        raise JwtRefused("No user matches the token's subject or email.", "user_unknown")
    if len(users) > 1:
        raise JwtRefused(
            "The token's email matches more than one user: an administrator must link the account.",
            "user_ambiguous",
        )
    user_id, is_staff, is_superuser = users[0]
    if is_staff or is_superuser:
        raise JwtRefused(
            "Staff accounts are linked to the platform by an administrator, not by email.",
            "user_unknown",
        )
    if ExternalIdentity.objects.filter(user_id=user_id, issuer=issuer).exists():
        raise JwtRefused(
            "The user is linked to another platform identity: an administrator must link this one.",
            "user_ambiguous",
        )
    try:
        identity = external_identity_link(user_id=user_id, issuer=issuer, subject=subject)
    except IntegrityError:  # the user was linked to another subject meanwhile
        raise JwtRefused(
            "The user is linked to another platform identity.", "user_ambiguous"
        ) from None
    logger.info("platform identity linked to user %s by email", identity.user_id)
    return int(identity.user_id)


def _identity(claims: dict[str, Any]) -> tuple[str, str, Any, bool]:
    return claims.get("iss", ""), claims["sub"], claims.get("email"), _email_unverified(claims)


def jwt_user_id(claims: dict[str, Any]) -> int:
    """The user id of verified claims, through the cache (a refusal is not cached)."""
    issuer, subject, email, unverified = _identity(claims)
    return get_cache().get_or_load(
        subject_key(issuer, subject),
        lambda: jwt_user_id_load(issuer, subject, email, unverified),
        ttl=access_ttl(),
    )


async def ajwt_user_id(claims: dict[str, Any]) -> int:
    """``jwt_user_id`` for async callers: a hit costs no thread, a miss reads (and on first
    sight writes) in a realtime database thread."""
    issuer, subject, email, unverified = _identity(claims)
    return await get_cache().aget_or_load(
        subject_key(issuer, subject),
        lambda: in_db_thread(jwt_user_id_load)(issuer, subject, email, unverified),
        ttl=access_ttl(),
    )


@receiver(post_save, sender=ExternalIdentity, dispatch_uid="realtime_external_identity_saved")
@receiver(post_delete, sender=ExternalIdentity, dispatch_uid="realtime_external_identity_deleted")
def external_identity_changed(sender: type, instance: ExternalIdentity, **kwargs: Any) -> None:
    """Drop the cached user of a subject an administrator relinked or unlinked (or whose
    user was deleted), now and after the commit."""
    cache, key = get_cache(), subject_key(instance.issuer, instance.subject)
    cache.delete(key)
    transaction.on_commit(lambda: cache.delete(key))


# --- "sign out everywhere" ----------------------------------------------------------------


def revoked_at_key(user_id: int, version: int) -> str:
    """The cache key of when a user's token version was reached: fixed once reached, so
    the key changes with the version and needs no invalidation."""
    return f"token_revoked_at:{user_id}:{version}"


def revoked_at_load(user_id: int, version: int) -> float:
    """When ``user_id`` signed out everywhere to reach ``version`` (Unix seconds); now,
    when the version moved on meanwhile (runs in a database thread)."""
    changed = (
        TokenVersion.objects.filter(user_id=user_id, version=version)
        .values_list("changed_at", flat=True)
        .first()
    )
    return changed.timestamp() if changed is not None else time.time()


def revoked_at(user_id: int, version: int) -> float:
    """``revoked_at_load`` through the cache."""
    return get_cache().get_or_load(
        revoked_at_key(user_id, version),
        lambda: revoked_at_load(user_id, version),
        ttl=access_ttl(),
    )


async def arevoked_at(user_id: int, version: int) -> float:
    """``revoked_at`` for async callers."""
    return await get_cache().aget_or_load(
        revoked_at_key(user_id, version),
        lambda: in_db_thread(revoked_at_load)(user_id, version),
        ttl=access_ttl(),
    )
