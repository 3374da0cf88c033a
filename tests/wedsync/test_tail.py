"""ASGI layers that hand over their application's coroutine (wedsync/server/tail.py,
ADR 0035): the same rules as the layers they stand for, and no coroutine of their own
left for the request's life."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from wedsync.server import serve
from wedsync.server.tail import TailProtocolTypeRouter, TailProxyHeaders


async def _echo(scope: dict, receive: Any, send: Any) -> dict:
    return scope


FOR = b"x-forwarded-for"
PROTO = b"x-forwarded-proto"


def _scope(kind: str, client: str, *headers: tuple[bytes, bytes]) -> dict:
    return {"type": kind, "client": (client, 40000), "scheme": "ws", "headers": list(headers)}


SCOPES = [
    # from a trusted proxy: the client and the scheme are the forwarded ones
    _scope("websocket", "10.0.0.7", (FOR, b"203.0.113.9"), (PROTO, b"https")),
    _scope("http", "10.0.0.7", (FOR, b"203.0.113.9, 10.0.0.7"), (PROTO, b"https")),
    # from anyone else: nothing changes
    _scope("websocket", "198.51.100.4", (FOR, b"203.0.113.9"), (PROTO, b"https")),
    # a scheme that is not one: ignored
    _scope("websocket", "10.0.0.7", (PROTO, b"gopher")),
    _scope("websocket", "10.0.0.7"),
    {"type": "lifespan"},
]  # fmt: skip


@pytest.mark.parametrize("scope", SCOPES)
async def test_proxy_headers__the_scope_is_what_uvicorns_middleware_makes(scope):
    trusted = "10.0.0.0/8"
    expected = await ProxyHeadersMiddleware(_echo, trusted_hosts=trusted)(dict(scope), None, None)

    layer = TailProxyHeaders(ProxyHeadersMiddleware(_echo, trusted_hosts=trusted))
    handed = layer(dict(scope), None, None)

    # the application's own coroutine, not one of the layer's awaiting it
    assert asyncio.iscoroutine(handed) and handed.cr_code is _echo.__code__
    assert await handed == expected


def test_proxy_headers__serves_config_runs_the_tail_layer_with_the_trusted_hosts(monkeypatch):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.9.9.9")
    config = serve.config("127.0.0.1", 0)
    config.load()

    layer = config.loaded_app
    assert type(layer) is TailProxyHeaders
    assert type(layer.app) is TailProtocolTypeRouter
    assert "10.9.9.9" in layer._rules.trusted_hosts
    assert "127.0.0.1" not in layer._rules.trusted_hosts


async def test_router__hands_over_the_applications_coroutine():
    router = TailProtocolTypeRouter({"websocket": _echo})
    scope = {"type": "websocket"}

    handed = router(scope, None, None)

    assert handed.cr_code is _echo.__code__
    assert await handed is scope


async def test_router__an_unknown_type_is_channels_value_error_when_awaited():
    router = TailProtocolTypeRouter({"websocket": _echo})

    call = router({"type": "lifespan"}, None, None)  # no error yet: servers await it

    with pytest.raises(ValueError, match="No application configured for scope type 'lifespan'"):
        await call


def test_layers__servers_and_asgiref_take_them_for_asgi_3():
    from asgiref.compatibility import is_double_callable

    from wedsync.asgi import application

    assert not is_double_callable(application)
    assert asyncio.iscoroutinefunction(application.__call__)
    assert not is_double_callable(TailProxyHeaders(ProxyHeadersMiddleware(_echo)))
