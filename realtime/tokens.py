"""Realtime tokens (PROTOCOL §2): signed, expiring, bound to one user.

A token is ``<base64url JSON payload>.<base64url HMAC-SHA256>`` made with
``django.core.signing`` under a salt of its own, so no other signed value of the site
(sessions, password-reset links) is ever accepted as a token. The payload holds the
user id, the expiry (Unix seconds) and a short fingerprint of the user's password hash
and token version (``TokenVersion``): changing the password, deactivating the user or
"sign out everywhere" (``tokens_revoke_all``, which bumps the version) revokes every
token already issued. Version 0 (no row) gives the fingerprint of the password hash
alone, as tokens had before versions existed, so those stay valid.
Tokens are compact and URL-safe; they travel in ``?token=`` and ``Authorization: Bearer``.
They are credentials: never log them.

Wherever a token is accepted, a JWT of the platform's sign-in (Supabase Auth) is too
(PROTOCOL §2, v1.1; ``realtime.jwt_auth``): a credential shaped as a JWT, while a JWT
key source is configured, is verified there, and its user is held to the same rules
here: deactivated, refused; "sign out everywhere" refuses every JWT issued (``iat``)
before it. A JWT carries no password fingerprint: a password change here closes the
user's open connections but does not refuse the platform's JWTs (the platform's password
is not ours).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core import signing
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from core.cache import get_cache
from core.db import in_db_thread
from weddings.caching import access_ttl, auser_cached, user_cached

from . import jwt_auth
from .layer import group_send_bounded
from .messages import ACCESS_GROUP, user_revoked_message
from .models import TokenVersion

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser as User

logger = logging.getLogger(__name__)

_SALT = "wedsync.realtime.token.v1"
# "." is not in the base64url alphabet, so the token needs no escaping in a URL.
_SEP = "."
# Enough to tell a changed password apart; the payload is signed, so it need not be secret.
_FINGERPRINT_LEN = 12
# A real token is about 100 characters; anything far longer is rejected before any work.
_MAX_TOKEN_LEN = 512
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-=.]+")


class TokenError(Exception):
    """A token was refused. ``code`` is stable: clients and logs may rely on it."""

    code = "token_error"
    default_message = "The token was refused."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)


class TokenInvalid(TokenError):
    """Not a token of ours, altered, for a user who no longer exists or changed password."""

    code = "token_invalid"
    default_message = "The token is invalid."


class TokenExpired(TokenError):
    """A genuine token past its expiry."""

    code = "token_expired"
    default_message = "The token has expired."


class TokenUserInactive(TokenError):
    """A genuine token of a user who has been deactivated."""

    code = "user_inactive"
    default_message = "The token's user is inactive."


def _now() -> float:
    """The current Unix time; a function of its own so tests can move the clock."""
    return time.time()


def _signer() -> signing.Signer:
    return signing.Signer(salt=_SALT, sep=_SEP)


# Where token authentication leaves the version it checked on the user it returns: the
# periodic access re-check (``access.connections_recheck``) compares it with the current.
CONNECT_VERSION_ATTR = "_realtime_token_version"
_VERSION_SALT = "wedsync.realtime.token.version"


def _versioned(auth_hash: str, version: int) -> str:
    if version:  # 0: the hash alone, as before versions existed
        mixed = salted_hmac(_VERSION_SALT, f"{auth_hash}:{version}", algorithm="sha256")
        auth_hash = mixed.hexdigest()
    return auth_hash[:_FINGERPRINT_LEN]


def _fingerprint(user: User, version: int = 0) -> str:
    return _versioned(user.get_session_auth_hash(), version)


def _fingerprint_matches(user: User, fingerprint: str, version: int = 0) -> bool:
    if constant_time_compare(fingerprint, _fingerprint(user, version)):
        return True
    # While SECRET_KEY is being rotated, tokens issued under a fallback key stay valid.
    return any(
        constant_time_compare(fingerprint, _versioned(fallback, version))
        for fallback in user.get_session_auth_fallback_hash()
    )


# --- token versions ("sign out everywhere") -----------------------------------------------


def token_version_key(user_id: int) -> str:
    """The cache key of a user's token version (dropped when it is bumped)."""
    return f"token_version:{user_id}"


def token_version_load(user_id: int) -> int:
    """A user's token version from the database (0 when there is no row)."""
    version = TokenVersion.objects.filter(user_id=user_id).values_list("version", flat=True).first()
    return int(version or 0)


def token_version(user_id: int) -> int:
    """A user's token version through the two-tier cache, like the user row itself."""
    return get_cache().get_or_load(
        token_version_key(user_id), lambda: token_version_load(user_id), ttl=access_ttl()
    )


async def atoken_version(user_id: int) -> int:
    """``token_version`` for async code: a hit costs no thread."""
    return await get_cache().aget_or_load(
        token_version_key(user_id),
        lambda: in_db_thread(token_version_load)(user_id),
        ttl=access_ttl(),
    )


def token_version_invalidate(user_id: int) -> None:
    """Drop the cached version now and after the current commit."""
    cache, key = get_cache(), token_version_key(user_id)
    cache.delete(key)
    transaction.on_commit(lambda: cache.delete(key))


def tokens_revoke_all(user: User) -> int:
    """Sign ``user`` out of realtime everywhere: every token issued so far stops working
    (its fingerprint no longer matches) and, after commit, every open connection of the
    user, in every server process, closes with 4001. Returns the new version."""
    with transaction.atomic():
        TokenVersion.objects.get_or_create(user_id=user.pk)
        # update() skips auto_now: the time is set here, as JWTs issued before it are refused.
        TokenVersion.objects.filter(user_id=user.pk).update(
            version=F("version") + 1, changed_at=timezone.now()
        )
        version = token_version_load(user.pk)
        token_version_invalidate(user.pk)

        def notify() -> None:
            try:
                async_to_sync(group_send_bounded)(ACCESS_GROUP, user_revoked_message(user.pk))
            except Exception:  # the tokens are dead anyway; the periodic re-check closes
                logger.warning("could not notify %s", ACCESS_GROUP, exc_info=True)

        transaction.on_commit(notify)
    return version


def token_ttl_validate(ttl: int | None) -> int:
    """The lifetime in seconds for ``ttl`` (None: the default); ValueError when out of range."""
    if ttl is None:
        ttl = settings.REALTIME_TOKEN_TTL
    maximum = settings.REALTIME_TOKEN_MAX_TTL
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise ValueError(f"The token lifetime must be a whole number of seconds, not {ttl!r}.")
    if not 1 <= ttl <= maximum:
        raise ValueError(
            f"The token lifetime must be between 1 and {maximum} seconds "
            f"(REALTIME_TOKEN_MAX_TTL), not {ttl}."
        )
    return ttl


def token_issuer(ttl: int | None = None) -> Callable[[User], str]:
    """``token_issue`` for a fixed ``ttl``, checked now (ValueError when out of range):
    what ``seed_demo`` issues its logins' tokens with."""
    ttl = token_ttl_validate(ttl)
    return lambda user: token_issue(user=user, ttl=ttl)


def token_issue(*, user: User, ttl: int | None = None, not_after: int | None = None) -> str:
    """A token for ``user`` valid for ``ttl`` seconds; called by the token API and commands.

    ``not_after`` (Unix seconds) caps the expiry: a token issued on the strength of
    another token passes that token's expiry, so that no chain of renewals outlives the
    credential it started from (the token API, PROTOCOL §2).
    """
    ttl = token_ttl_validate(ttl)
    if user.pk is None:
        raise ValueError("Cannot issue a token for a user that is not saved.")
    if not user.is_active:
        raise ValueError(f"Cannot issue a token for inactive user {user.get_username()!r}.")
    # Rounded up, so a token never lives shorter than asked (unless capped).
    expires = math.ceil(_now() + ttl)
    if not_after is not None:
        expires = min(expires, not_after)
    user_id = user.pk if isinstance(user.pk, int) else str(user.pk)  # a UUID key, say
    payload = {"u": user_id, "e": expires, "f": _fingerprint(user, token_version(user.pk))}
    return _signer().sign_object(payload)


def token_expires_at(token: str) -> int:
    """The expiry (Unix seconds) of a token issued here; TokenInvalid when it is not one.
    For a platform JWT (which authentication has accepted), its ``exp``."""
    if jwt_auth.is_jwt(token):
        return jwt_auth.jwt_expires_at(token)
    return _payload(token)[1]


def _payload(token: str) -> tuple[int, int, str]:
    if (
        not isinstance(token, str)
        or len(token) > _MAX_TOKEN_LEN
        or not _TOKEN_CHARS.fullmatch(token)
    ):
        raise TokenInvalid()
    try:
        payload = _signer().unsign_object(token)
    except (signing.BadSignature, ValueError):
        raise TokenInvalid() from None
    if not isinstance(payload, dict) or payload.keys() != {"u", "e", "f"}:
        raise TokenInvalid()
    user_id, expires, fingerprint = payload["u"], payload["e"], payload["f"]
    if (
        not isinstance(user_id, int | str)
        or isinstance(user_id, bool)
        or not isinstance(expires, int)
        or isinstance(expires, bool)
        or not isinstance(fingerprint, str)
    ):
        raise TokenInvalid()
    return user_id, expires, fingerprint


def token_authenticate(token: str) -> User:
    """The user a token (or a platform JWT) names; raises a TokenError subclass when it
    must be refused."""
    if jwt_auth.is_jwt(token):
        try:
            claims = jwt_auth.jwt_verify(token)
            user = user_cached(jwt_auth.jwt_user_id(claims))
            if user is None:
                raise TokenJwtRefused("user_unknown", "The token's user no longer exists.")
            version = token_version(user.pk)
            revoked = jwt_auth.revoked_at(user.pk, version) if version else None
        except jwt_auth.JwtRefused as exc:
            raise _refusal(exc) from None
        return _jwt_user(user, claims, version, revoked)
    user_id, expires, fingerprint = _payload(token)
    if _now() >= expires:
        raise TokenExpired()
    user = user_cached(user_id)  # a connect-path read: cached, like the version
    return _token_user(user, fingerprint, token_version(user_id) if user is not None else 0)


async def atoken_authenticate(token: str) -> User:
    """``token_authenticate`` for consumers and async views: a cached user costs no
    thread; a miss reads the database in a realtime database thread (and a JWKS fetch
    runs in a worker thread)."""
    if jwt_auth.is_jwt(token):
        try:
            claims = await jwt_auth.ajwt_verify(token)
            user = await auser_cached(await jwt_auth.ajwt_user_id(claims))
            if user is None:
                raise TokenJwtRefused("user_unknown", "The token's user no longer exists.")
            version = await atoken_version(user.pk)
            revoked = await jwt_auth.arevoked_at(user.pk, version) if version else None
        except jwt_auth.JwtRefused as exc:
            raise _refusal(exc) from None
        return _jwt_user(user, claims, version, revoked)
    user_id, expires, fingerprint = _payload(token)
    if _now() >= expires:
        raise TokenExpired()
    user = await auser_cached(user_id)
    version = await atoken_version(user.pk) if user is not None else 0
    return _token_user(user, fingerprint, version)


def _token_user(user: User | None, fingerprint: str, version: int) -> User:
    if user is None or not _fingerprint_matches(user, fingerprint, version):
        raise TokenInvalid()
    if not user.is_active:
        raise TokenUserInactive()
    setattr(user, CONNECT_VERSION_ATTR, version)  # a fresh instance of the cached row
    return user


class TokenJwtRefused(TokenError):
    """A platform JWT refused for a reason of its own (``user_unknown``,
    ``user_ambiguous``, ``jwt_keys_unavailable``); the code is set per refusal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _refusal(exc: jwt_auth.JwtRefused) -> TokenError:
    """The TokenError of a JWT refusal: the token's own codes where they mean the same,
    so a client that renews on ``token_expired`` does so for JWTs too."""
    if exc.code == "token_expired":
        return TokenExpired(str(exc))
    if exc.code == "token_invalid":
        return TokenInvalid(str(exc))
    return TokenJwtRefused(exc.code, str(exc))


def _jwt_user(user: User, claims: dict, version: int, revoked: float | None) -> User:
    """The user of a verified platform JWT, under the rules every credential obeys."""
    if not user.is_active:
        raise TokenUserInactive()
    # "Sign out everywhere" at ``revoked``: a JWT issued before it is refused. The same
    # second counts as before (iat has whole seconds): the client signs in again.
    if revoked is not None and int(claims["iat"]) < math.ceil(revoked):
        raise TokenInvalid("The token was issued before the user signed out everywhere.")
    setattr(user, CONNECT_VERSION_ATTR, version)  # closes with the others on the next bump
    return user
