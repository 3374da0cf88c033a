"""HTTP request metrics (``wedsync_http_requests_total``,
``wedsync_http_request_duration_seconds``; docs/monitoring.md): one Django middleware,
early in ``settings.MIDDLEWARE``, so that it sees every response (redirects, static
files, 404s) and times everything below it.

The ``route`` label is the URL pattern's name (``wedding-snapshot``, ``web:wedding``,
``admin:index``), never the path: ids in URLs and made-up paths would grow the metric
files without bound. A response no URL pattern produced is ``static`` (WhiteNoise) or
``unmatched`` (a 404, a redirect to HTTPS or to a trailing slash).

Sync and async capable: under ASGI it runs on the event loop and costs two mmap writes
per request, no thread hop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from core import metrics


def route_name(request: HttpRequest) -> str:
    """The bounded name of what answered ``request``: its URL pattern's name (its view's
    dotted path when the pattern has none), ``static`` or ``unmatched``."""
    match = getattr(request, "resolver_match", None)
    if match is not None:
        return match.view_name or match.route or "unmatched"
    if request.path_info.startswith(_static_prefix()):
        return "static"
    return "unmatched"


def _static_prefix() -> str:
    return "/" + settings.STATIC_URL.lstrip("/")


class HttpMetricsMiddleware:
    """Counts each response by method, route name and status, and times it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self._measure(request, response, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = await self.get_response(request)
        self._measure(request, response, started)
        return response

    @staticmethod
    def _measure(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
        # Django turns an exception below into a response before it gets here (500).
        metrics.http_request(
            request.method or "",
            route_name(request),
            response.status_code,
            time.perf_counter() - started,
        )
