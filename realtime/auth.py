"""Handshake authentication for /ws/realtime/ (PROTOCOL §2).

* A handshake whose ``Origin`` is not an allowed host is refused (HTTP 403), whatever its
  credentials: a foreign page must not ride on a user's session cookie.
* With an allowed ``Origin`` (a browser), the Django session authenticates.
* With no ``Origin`` (not a browser), only ``?token=`` authenticates; a session cookie
  alone is ignored.
* A valid ``?token=`` authenticates in either case.

The consumer closes with 4001 when ``scope["user"]`` is not authenticated.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import is_same_domain

from .tokens import TokenError, atoken_authenticate


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def origin_allowed(origin: str) -> bool:
    """True when the Origin's host is one of ALLOWED_HOSTS (with DEBUG, also localhost)."""
    parsed = urlparse(origin)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        return False
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    host = parsed.hostname if ":" not in parsed.hostname else f"[{parsed.hostname}]"
    return any(pattern == "*" or is_same_domain(host, pattern) for pattern in allowed)


class OriginCheckMiddleware:
    """Refuse a WebSocket handshake from a foreign Origin before anything else runs."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        origin = _header(scope, b"origin")
        if origin is not None and not origin_allowed(origin):
            return await WebsocketDenier()(scope, receive, send)
        scope["has_origin"] = origin is not None
        return await self.app(scope, receive, send)


class TokenAuthMiddleware:
    """Resolve ``scope["user"]`` from ``?token=``, or keep the session user for browsers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        query = parse_qs(scope.get("query_string", b"").decode("latin1"))
        token = (query.get("token") or [None])[0]
        scope = dict(scope)
        if token:
            try:
                scope["user"] = await atoken_authenticate(token)
            except TokenError as exc:
                scope["user"] = AnonymousUser()
                scope["auth_error"] = exc.code
        elif not scope.get("has_origin"):
            # Not a browser: a session cookie alone does not authenticate.
            scope["user"] = AnonymousUser()
        return await self.app(scope, receive, send)


def realtime_auth_stack(app: Any) -> Any:
    """Origin check, then session auth, then token auth, around the WebSocket routes."""
    return OriginCheckMiddleware(AuthMiddlewareStack(TokenAuthMiddleware(app)))
