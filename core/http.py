"""HTTP helpers every app's JSON API shares: responses, errors, bodies, and the decorators
that authenticate a view, check its method and turn errors into JSON.

Errors are JSON ``{"error": {"code", "message", ...}}``. Views raise ``ApiError`` (or a
subclass, such as realtime's protocol errors) and the decorators answer it; a
``DatabaseError`` becomes 503 ``unavailable``. How a request is authenticated (a session,
a bearer token) is the caller's: ``api_views`` takes the two authenticate functions.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

# The largest JSON body a view reads by default (the protocol's frame limit, PROTOCOL §1).
MAX_BODY_BYTES = 65536


def json_response(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


def json_error(code: str, message: str, status: int, **extra: Any) -> HttpResponse:
    return json_response({"error": {"code": code, "message": message, **extra}}, status)


class ApiError(Exception):
    """A failure the client is told about: a stable ``code``, a message, the HTTP status
    and any extra fields of the error object."""

    def __init__(self, code: str, message: str, status: int, /, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        """The fields of the error object: code, message and any extras."""
        return {"code": self.code, "message": self.message, **self.extra}


def csrf_rejection(request: HttpRequest) -> HttpResponse | None:
    """Django's CSRF answer for a session-authenticated write, or None when it passes."""
    check = CsrfViewMiddleware(lambda req: HttpResponse())
    check.process_request(request)
    return check.process_view(request, None, (), {})


def json_body(request: HttpRequest, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's JSON object body; ``ApiError`` 413/400 when too large or not one."""
    try:
        # Over DATA_UPLOAD_MAX_MEMORY_SIZE Django refuses to read the body at all.
        too_large = len(request.body) > max_bytes
    except RequestDataTooBig:
        too_large = True
    if too_large:
        raise ApiError("too_large", "request body is too large", 413)
    try:
        data = orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError:
        raise ApiError("bad_request", "the body is not valid JSON", 400) from None
    if not isinstance(data, dict):
        raise ApiError("bad_request", "the body must be a JSON object", 400)
    return data


def error_response(exc: Exception) -> HttpResponse:
    """The JSON answer of an ``ApiError`` or a ``DatabaseError``."""
    if isinstance(exc, ApiError):
        return json_response({"error": exc.as_dict()}, exc.status)
    return json_error("unavailable", "the database is not available", 503)


API_ERRORS = (ApiError, DatabaseError)

Authenticate = Callable[[HttpRequest], HttpResponse | None]
AsyncAuthenticate = Callable[[HttpRequest], Awaitable[HttpResponse | None]]


def api_views(
    authenticate: Authenticate, aauthenticate: AsyncAuthenticate
) -> tuple[Callable[..., Callable], Callable[..., Callable]]:
    """``(api_view, async_api_view)`` decorators that check the method, authenticate with
    the given function (it sets ``request.user`` or returns the refusal) and turn
    ``API_ERRORS`` into JSON. The async one awaits ``aauthenticate`` and the view."""
    return (
        functools.partial(_api_view, authenticate),
        functools.partial(_async_api_view, aauthenticate),
    )


def _method_refused(request: HttpRequest, methods: tuple[str, ...]) -> HttpResponse | None:
    if request.method not in methods:
        return json_error("method_not_allowed", f"use {' or '.join(methods)}", 405)
    return None


def _api_view(authenticate: Authenticate, *methods: str) -> Callable:
    def decorate(view: Callable) -> Callable:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            refused = _method_refused(request, methods) or authenticate(request)
            if refused is not None:
                return refused
            try:
                return view(request, *args, **kwargs)
            except API_ERRORS as exc:
                return error_response(exc)

        return wrapper

    return decorate


def _async_api_view(aauthenticate: AsyncAuthenticate, *methods: str) -> Callable:
    def decorate(view: Callable) -> Callable:
        @csrf_exempt
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            refused = _method_refused(request, methods)
            if refused is not None:
                return refused
            try:
                refused = await aauthenticate(request)
                if refused is not None:
                    return refused
                return await view(request, *args, **kwargs)
            except API_ERRORS as exc:
                return error_response(exc)

        return wrapper

    return decorate
