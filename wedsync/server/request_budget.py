"""Every HTTP client's request budget, refused before Django (429 with ``Retry-After``).

The API's own budgets (publishes, bytes, snapshots, replays, tokens: ``realtime.limits``)
decide what a member may *do*, shared across processes in Redis. Each refusal still costs
a Django request: routing, the middleware, the authentication of the token or session, a
Redis call. A member flooding the HTTP API from four keep-alive connections spent most of
a core on refusals alone (``loadtest hostile-member``, docs/benchmarks.md). Here, at the
ASGI level, each client has a token bucket of requests in this process's memory:
``HTTP_REQUEST_RATE`` a second, burst ``HTTP_REQUEST_BURST``; over it the request is
answered 429 without Django, a thread, a database or Redis, once the client's next token
is due (at most a second later): the answer says when to retry, and a client that
retries at once on its kept-alive connection waits as long anyway. Four connections
flooding refusals as fast as they could send cost the process 70 % of a core; held
back, they cost nothing but four sleeping tasks.

Who "a client" is: its credentials as sent (the ``Authorization`` header, else the session
cookie), else its address (the proxy's forwarded one when FORWARDED_ALLOW_IPS trusts the
proxy, as uvicorn sets it). Credentials are hashed, never kept. A member holding several
tokens has a bucket per token; tokens are a budget of their own (``REALTIME_TOKEN_ISSUE_*``).

Never budgeted: probes (``/healthz``, ``/readyz``), Prometheus (``/metrics``), KEDA
(``/api/scaling/desired``) and static files. The reverse proxy in front limits per client
address as well (docs/security.md); this is the server's own floor behind it.

A client's requests within the budget are handled ``HTTP_CLIENT_CONCURRENT_REQUESTS`` (2)
at a time; the next waits its turn. Browsers open six connections to a host, so a page
load with its calls waits a few milliseconds; a flood from many kept-alive connections
holds two of the process's request threads, never all of them.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cachetools import TTLCache
from django.conf import settings

from core.http import ApiError
from realtime.limits import TokenBucket, UserSlots, rate_limited

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

# Paths never budgeted (exact, after the root path).
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/scaling/desired"})
# Clients remembered at once; an evicted bucket comes back full, which an idle one would be.
MAX_CLIENTS = 100_000
IDLE_S = 600
# The longest a refusal is held back before it is sent.
TARPIT_MAX_S = 1.0


def client_key(scope: Scope) -> tuple[str, int | str]:
    """Who a request counts against: its credentials (hashed), else its address."""
    cookie_name = settings.SESSION_COOKIE_NAME.encode("latin-1")
    session = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value:
            return ("credentials", hash(value))
        if name == b"cookie" and session is None:
            session = _cookie(value, cookie_name)
    if session:
        return ("session", hash(session))
    client = scope.get("client")
    return ("address", client[0] if client else "")


def _cookie(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a Cookie header, or None."""
    for part in header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            return value
    return None


class RequestBudget:
    """The per-client buckets of one process."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: TTLCache[tuple[str, int | str], TokenBucket] = TTLCache(MAX_CLIENTS, IDLE_S)

    def wait(self, key: tuple[str, int | str], now: float | None = None) -> float:
        """0 when the request may go on (it took a token), else seconds until it may."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        if bucket.allow(now):
            return 0.0
        return max(bucket.retry_after(now), 0.001)


def _exempt(scope: Scope) -> bool:
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    static = "/" + settings.STATIC_URL.strip("/") + "/"
    return path in EXEMPT_PATHS or path.startswith(static)


async def _refuse(send: Any, err: ApiError, wait: float) -> None:
    body = json.dumps({"error": err.as_dict()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(math.ceil(wait)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def request_budget(app: ASGIApp) -> ASGIApp:
    """``app`` behind the per-client request budget (HTTP only; off when
    ``HTTP_REQUEST_RATE`` is 0)."""
    rate, burst = settings.HTTP_REQUEST_RATE, settings.HTTP_REQUEST_BURST
    if rate <= 0:
        return app
    budget = RequestBudget(rate, max(1, burst))
    slots = UserSlots(settings.HTTP_CLIENT_CONCURRENT_REQUESTS)

    async def guarded(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not _exempt(scope):
            key = client_key(scope)
            wait = budget.wait(key)
            if wait:
                err = rate_limited("requests", rate, wait)  # PROTOCOL §8's error, counted
                # Answered once a token is back (at most TARPIT_MAX_S): a client that
                # retries at once, on a kept-alive connection, is held to the budget's
                # pace instead of costing the process a refusal as fast as it can send.
                await asyncio.sleep(min(wait, TARPIT_MAX_S))
                await _refuse(send, err, wait)
                return
            # As a member's WebSocket frames (``realtime.limits.UserSlots``): one client's
            # requests take their turn, they never fill the process's threads together.
            async with slots.hold(key):
                await app(scope, receive, send)
            return
        await app(scope, receive, send)

    return guarded
