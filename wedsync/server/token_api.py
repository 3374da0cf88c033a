"""The lean path of the token API (docs/adr/0012-lean-api-path.md).

A request under ``/api/`` with ``Authorization: Bearer`` is served by ``TokenApiHandler``:
Django's ASGI handler (same URL conf, views, JSON error handlers, request signals) whose
middleware is only what a token request needs. Every other request, and every browser
request with its session cookie, goes through the full ``settings.MIDDLEWARE``.

What a bearer request leaves out, and why it may:

* sessions, authentication middleware, CSRF, messages: the view authenticates the token
  itself (``realtime.api.api_authenticate``); a token is not a cookie, so there is no
  cross-site request to forge, and ``api_authenticate`` checks CSRF only for session
  callers. Every ``/api/`` view authenticates through it (or a token of its own) and is
  ``csrf_exempt``;
* WhiteNoise: no static file is served under ``/api/``.

What it keeps: ``SecurityMiddleware`` (nosniff, Referrer-Policy, COOP, HSTS, the HTTPS
redirect), ``CommonMiddleware`` (ALLOWED_HOSTS, APPEND_SLASH, Content-Length) and
``XFrameOptionsMiddleware``: the same response headers as the full chain.

Django's ``MiddlewareMixin`` in async mode runs each ``process_request`` and
``process_response`` through ``sync_to_async``: a thread hop each. These three only look
at the request and the response (no database, no files, no network), so the subclasses
below run them on the event loop. A request on the lean path to an async view whose
data is cached then hands off to a thread only for Django's request signals (start and
end), in a reused thread (``_RequestThreads``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse
from django.middleware import clickjacking, common, security

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class InlineHooksMixin:
    """For a ``MiddlewareMixin`` whose hooks do no I/O: in async mode, call
    ``process_request``/``process_response`` directly instead of in a thread."""

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)  # type: ignore[attr-defined]
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(InlineHooksMixin, security.SecurityMiddleware):
    """Django's ``SecurityMiddleware``, hooks on the event loop."""


class CommonMiddleware(InlineHooksMixin, common.CommonMiddleware):
    """Django's ``CommonMiddleware``, hooks on the event loop."""


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    """Django's ``XFrameOptionsMiddleware``, hooks on the event loop."""


# In the order of settings.MIDDLEWARE.
TOKEN_API_MIDDLEWARE = [
    # As at the top of settings.MIDDLEWARE: the request id of every log line, and the HTTP
    # request metrics (both on the event loop, no thread hop).
    "django_guid.middleware.guid_middleware",
    "monitoring.middleware.HttpMetricsMiddleware",
    "wedsync.server.token_api.SecurityMiddleware",
    "wedsync.server.token_api.CommonMiddleware",
    "wedsync.server.token_api.XFrameOptionsMiddleware",
]


class _RequestThreads:
    """Single-thread executors lent to one request at a time, and kept for the next.

    Django's handler gives every request a thread of its own for its thread-sensitive
    calls (at least the request signals' receivers), made for the request and joined
    after it by yet another new thread: two thread starts per request, most of what a
    cached read costs. A lent executor keeps Django's guarantee (one thread, one request
    at a time) without the starts; asgiref's ``ThreadSensitiveContext(executor=...)``
    exists for this. At most ``keep`` idle ones are kept; a burst makes more.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._idle: list[ThreadPoolExecutor] = []

    def lend(self) -> ThreadPoolExecutor:
        if self._idle:
            return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="wedsync-api")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        if len(self._idle) < self.keep:
            self._idle.append(executor)
        else:
            executor.shutdown(wait=False)


class TokenApiHandler(ASGIHandler):
    """Django's ASGI handler with ``TOKEN_API_MIDDLEWARE`` instead of ``settings.MIDDLEWARE``,
    and request threads that are reused."""

    # Idle request threads kept: about the requests in flight at once on a busy process.
    KEEP_THREADS = 16

    def __init__(self) -> None:
        super().__init__()
        self._threads = _RequestThreads(self.KEEP_THREADS)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self._threads.lend()
        try:
            # As ASGIHandler.__call__, with a lent thread instead of a new one. handle()
            # returns only after the request's last thread-sensitive call finished.
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        except BaseException:
            # Cancelled or failed: a call may still run in the thread; do not lend it again.
            executor.shutdown(wait=False)
            raise
        self._threads.give_back(executor)

    def load_middleware(self, is_async: bool = False) -> None:
        # Django builds the chain from settings.MIDDLEWARE; let it build ours with the
        # same code (once, when the handler is made at start-up, before any request).
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = TOKEN_API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full


def is_token_api_request(scope: Scope) -> bool:
    """An HTTP request under /api/ that carries ``Authorization: Bearer``."""
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if not path.startswith("/api/"):
        return False
    return any(
        name == b"authorization" and value.startswith(b"Bearer ")
        for name, value in scope.get("headers", ())
    )


def token_api_router(full: ASGIApp, lean: ASGIApp) -> ASGIApp:
    """The HTTP application: bearer requests under /api/ to ``lean``, the rest to ``full``."""

    async def route(scope: Scope, receive: Any, send: Any) -> None:
        app = lean if is_token_api_request(scope) else full
        await app(scope, receive, send)

    return route
