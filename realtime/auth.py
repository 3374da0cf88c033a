"""Handshake authentication for /ws/realtime/ (PROTOCOL §2).

* A handshake whose ``Origin`` is not an allowed origin is refused (HTTP 403), whatever
  its credentials: a foreign page must not ride on a user's session cookie. Allowed: the
  handshake's own origin (scheme, host and port; the ``Host`` being one of
  ``ALLOWED_HOSTS``), and ``CSRF_TRUSTED_ORIGINS`` (``origin_allowed``).
* With an allowed ``Origin`` (a browser), the Django session authenticates.
* With no ``Origin`` (not a browser), only ``?token=`` authenticates; a session cookie
  alone is ignored.
* A valid ``?token=`` authenticates in either case; so does a valid ``?ticket=`` (a
  single-use connect ticket, ``realtime.tickets``, PROTOCOL §2 v1.1), which the
  handshake uses up whether it then authenticates or not. With both, the token
  authenticates and the ticket is left unused.

The consumer closes with 4001 when ``scope["user"]`` is not authenticated.

One middleware does all of it, rather than channels' cookie, session and auth
middleware stacked around a token middleware and a router: each of those stays on the
stack for the connection's whole life with its own copy of the scope, and channels'
``AuthMiddleware`` resolves the session user in the process's one thread-sensitive
thread even for a token client. Here a token client costs no thread when its user is
cached (``tokens.atoken_authenticate``), and a browser's session is read in the
realtime database threads.
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from asgiref.sync import markcoroutinefunction
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host

from core.db import in_db_thread

from .tickets import aticket_authenticate
from .tokens import TokenError, atoken_authenticate


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_parts(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, the port filled in; None if not one."""
    try:
        parsed = urlsplit(origin.strip().lower())
        port = parsed.port
    except ValueError:  # a bad port, a bad IPv6 literal
        return None
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.hostname:
        return None
    if parsed.path or parsed.query or parsed.fragment or parsed.username or parsed.password:
        return None  # an Origin is scheme://host[:port], nothing more
    return parsed.scheme, parsed.hostname, port or _DEFAULT_PORTS[parsed.scheme]


def _handshake_is_secure(scope: dict[str, Any]) -> bool:
    """As ``request.is_secure()``: the proxy's header when SECURE_PROXY_SSL_HEADER trusts
    it (DJANGO_SECURE_PROXY_SSL_HEADER), else the connection's own scheme."""
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        meta_name, secure_value = proxy
        name = meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
        value = _header(scope, name)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme", "ws") in {"wss", "https"}


def _own_origin(scope: dict[str, Any]) -> str | None:
    """The handshake's own origin, ``http(s)://`` + its ``Host`` header, when that Host is
    one of ALLOWED_HOSTS (as ``request.get_host()``: with DEBUG and none set, localhost)."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed):
        return None
    return f"{'https' if _handshake_is_secure(scope) else 'http'}://{host}"


def _trusted(parts: tuple[str, str, int]) -> bool:
    """One of CSRF_TRUSTED_ORIGINS, as Django's CSRF check reads them: a full origin, or
    ``scheme://*.domain`` for the domain's subdomains (with the same port)."""
    scheme, host, port = parts
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in entry
        trusted = _origin_parts(entry.replace("://*.", "://", 1) if wildcard else entry)
        if trusted is None:
            continue
        if not wildcard and trusted == parts:
            return True
        t_scheme, t_host, t_port = trusted
        if wildcard and (scheme, port) == (t_scheme, t_port) and host.endswith("." + t_host):
            return True
    return False


def origin_allowed(origin: str, scope: dict[str, Any]) -> bool:
    """True when the ``Origin`` of this handshake is the same origin as the handshake
    (scheme, host and port; ``ws`` is ``http``, ``wss`` is ``https``; its ``Host`` one of
    ALLOWED_HOSTS), or one of CSRF_TRUSTED_ORIGINS. docs/security.md."""
    parts = _origin_parts(origin)
    if parts is None:
        return False
    own = _own_origin(scope)
    if own is not None and _origin_parts(own) == parts:
        return True
    return _trusted(parts)


def _session_key(scope: dict[str, Any]) -> str | None:
    raw = _header(scope, b"cookie")
    return parse_cookie(raw).get(settings.SESSION_COOKIE_NAME) or None if raw else None


def _session_user(session_key: str) -> Any:
    """The user of a Django session, as a request would see it (runs in a database thread).

    Django's own ``get_user``: the session's backend and user, and the session hash
    checked against the user's password.
    """
    from django.contrib.auth import get_user

    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return get_user(SimpleNamespace(session=store))  # the one attribute it reads


session_user = in_db_thread(_session_user)


# The scope key under which ``RealtimeAuthMiddleware`` hands itself to an application
# that runs the admission (``RealtimeAuthMiddleware.admit``) as its first step.
ADMISSION = "wedsync.admission"


class RealtimeAuthMiddleware:
    """The origin check, the path, and ``scope["user"]`` from ``?token=``, ``?ticket=``
    or, for a browser, the session cookie; then the consumer."""

    def __init__(self, app: Any, *, path: str) -> None:
        self.app = app
        self.path = path
        # An application that runs the admission itself as its first step (the realtime
        # consumer: ``runs_admission``) is handed the connection at once, and this layer
        # holds no coroutine frame for the connection's life (ADR 0035). Any other
        # application is admitted here first, as before.
        self._hand_over = getattr(app, "runs_admission", False) is True

    def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        if self._hand_over:
            scope[ADMISSION] = self
            return self.app(scope, receive, send)
        return self._admitted(scope, receive, send)

    async def _admitted(self, scope: dict, receive: Any, send: Any) -> Any:
        if not await self.admit(scope, receive, send):
            return None
        return await self.app(scope, receive, send)

    async def admit(self, scope: dict, receive: Any, send: Any) -> bool:
        """Check the handshake and set ``scope["user"]``: True when the application may
        go on; else the handshake was refused (403) and it must return."""
        if await self._admit(scope):
            return True
        await WebsocketDenier()(scope, receive, send)
        return False

    async def _admit(self, scope: dict) -> bool:
        """False for a foreign Origin or another path; else sets ``scope["user"]``.

        The scope is changed in place, not copied: this layer and the consumer are all
        there is below the server, and a copy per connection is memory held for its life.
        """
        origin = _header(scope, b"origin")
        path = scope["path"][len(scope.get("root_path", "")) :]
        if path != self.path or (origin is not None and not origin_allowed(origin, scope)):
            return False
        scope["user"] = AnonymousUser()
        query = parse_qs(scope.get("query_string", b"").decode("latin1"))
        token = (query.get("token") or [None])[0]
        ticket = (query.get("ticket") or [None])[0]
        if token or ticket:
            try:
                if token:
                    scope["user"] = await atoken_authenticate(token)
                else:
                    scope["user"] = await aticket_authenticate(ticket)
            except TokenError as exc:  # tickets' errors are TokenErrors too
                scope["auth_error"] = exc.code
        elif origin is not None:
            # A browser: its session. Without an Origin a session cookie alone does not
            # authenticate (a client that is not a browser uses a token).
            session_key = _session_key(scope)
            if session_key:
                scope["user"] = await session_user(session_key)
        return True


# A plain function handing over a coroutine: marked, so that servers and asgiref take the
# layer for ASGI 3 (an ``async def`` would be detected as one).
markcoroutinefunction(RealtimeAuthMiddleware.__call__)
