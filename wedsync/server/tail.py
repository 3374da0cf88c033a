"""ASGI layers that hand their application's coroutine to the server instead of awaiting
it (docs/adr/0035-memory-per-connection.md).

A layer written ``async def __call__(...): ...; return await self.app(...)`` keeps its
coroutine, suspended, for as long as the request runs: for a WebSocket, the
connection's whole life (~240 bytes each, measured with ``bench/memtrace.py``). A layer
that only looks at or changes the scope before the application starts can instead be a
plain function returning ``self.app(...)``, the application's own coroutine, which the
server awaits in its place. Marked as coroutine functions (asgiref's
``markcoroutinefunction``) so that servers and asgiref take them for ASGI 3 as before.
"""

from __future__ import annotations

import copy
from typing import Any

from asgiref.sync import markcoroutinefunction
from channels.routing import ProtocolTypeRouter
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware


async def _unchanged(scope: dict, receive: Any, send: Any) -> None:
    return None


class TailProxyHeaders:
    """uvicorn's ``ProxyHeadersMiddleware`` (``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` from ``FORWARDED_ALLOW_IPS``), run to the point where it would
    call the application, then the application's coroutine returned.

    uvicorn's own code decides: its ``__call__`` runs against an application that returns
    at once, so it finishes within ``send(None)`` having rewritten the scope in place,
    exactly as it would have before calling ours. An uvicorn whose middleware awaits
    anything else first is a ``RuntimeError`` at the first request, not a skipped rule.
    """

    def __init__(self, middleware: ProxyHeadersMiddleware) -> None:
        self.app = middleware.app
        self._rules = copy.copy(middleware)  # its trusted hosts, in front of no application
        self._rules.app = _unchanged

    def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        step = self._rules(scope, receive, send)
        try:
            step.send(None)
        except StopIteration:
            pass
        else:
            step.close()
            raise RuntimeError("uvicorn's proxy-headers middleware suspended; not applied")
        return self.app(scope, receive, send)


markcoroutinefunction(TailProxyHeaders.__call__)
TailProxyHeaders._asgi_single_callable = True  # type: ignore[attr-defined]


class TailProtocolTypeRouter(ProtocolTypeRouter):
    """Channels' ``ProtocolTypeRouter`` (an application per scope type) handing over the
    application's coroutine. An unknown type is the same ``ValueError``, raised when the
    server awaits the call, as Channels raises it."""

    def __call__(self, scope: dict, receive: Any, send: Any) -> Any:  # type: ignore[override]
        application = self.application_mapping.get(scope["type"])
        if application is None:
            return ProtocolTypeRouter.__call__(self, scope, receive, send)
        return application(scope, receive, send)


markcoroutinefunction(TailProtocolTypeRouter.__call__)
TailProtocolTypeRouter._asgi_single_callable = True  # type: ignore[attr-defined]
