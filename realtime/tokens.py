"""Realtime tokens (PROTOCOL §2): signed, expiring, bound to one user.

A token is ``<base64url JSON payload>.<base64url HMAC-SHA256>`` made with
``django.core.signing`` under a salt of its own, so no other signed value of the site
(sessions, password-reset links) is ever accepted as a token. The payload holds the
user id, the expiry (Unix seconds) and a short fingerprint of the user's password hash:
changing the password, like deactivating the user, revokes every token already issued.
Tokens are compact and URL-safe; they travel in ``?token=`` and ``Authorization: Bearer``.
They are credentials: never log them.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings
from django.core import signing
from django.utils.crypto import constant_time_compare

from weddings.caching import auser_cached, user_cached

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser as User

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


def _fingerprint(user: User) -> str:
    return user.get_session_auth_hash()[:_FINGERPRINT_LEN]


def _fingerprint_matches(user: User, fingerprint: str) -> bool:
    if constant_time_compare(fingerprint, _fingerprint(user)):
        return True
    # While SECRET_KEY is being rotated, tokens issued under a fallback key stay valid.
    return any(
        constant_time_compare(fingerprint, fallback[:_FINGERPRINT_LEN])
        for fallback in user.get_session_auth_fallback_hash()
    )


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
    payload = {"u": user_id, "e": expires, "f": _fingerprint(user)}
    return _signer().sign_object(payload)


def token_expires_at(token: str) -> int:
    """The expiry (Unix seconds) of a token issued here; TokenInvalid when it is not one."""
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
    """The user a token names; raises a TokenError subclass when it must be refused."""
    user_id, expires, fingerprint = _payload(token)
    if _now() >= expires:
        raise TokenExpired()
    return _token_user(user_cached(user_id), fingerprint)  # a connect-path read: cached


async def atoken_authenticate(token: str) -> User:
    """``token_authenticate`` for consumers and async views: a cached user costs no
    thread; a miss reads the database in a realtime database thread."""
    user_id, expires, fingerprint = _payload(token)
    if _now() >= expires:
        raise TokenExpired()
    return _token_user(await auser_cached(user_id), fingerprint)


def _token_user(user: User | None, fingerprint: str) -> User:
    if user is None or not _fingerprint_matches(user, fingerprint):
        raise TokenInvalid()
    if not user.is_active:
        raise TokenUserInactive()
    return user
