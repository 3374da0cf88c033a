"""The WebSocket handshake's Origin check (realtime/auth.py ``origin_allowed``), through
the real ASGI application: the full origin (scheme, host, port) must be the handshake's
own (its Host one of ALLOWED_HOSTS) or one of CSRF_TRUSTED_ORIGINS; no Origin (not a
browser) is not checked. docs/security.md "WebSocket origin check"."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from realtime.tokens import token_issue
from tests.factories import make_user
from wedsync.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

SITE = "wedsync.example.com"


@pytest.fixture(autouse=True)
def site(settings) -> None:
    settings.ALLOWED_HOSTS = [SITE, "localhost"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.org", "https://*.partner.example.net"]
    settings.SECURE_PROXY_SSL_HEADER = None


@pytest.fixture
async def token() -> str:
    return await database_sync_to_async(lambda: token_issue(user=make_user()))()


async def handshake(
    token: str, *, origin: str | None, host: str = SITE, scheme: str = "wss", **headers: str
) -> bool:
    """Connect with a valid token and these headers; True when it is accepted and answers
    a ping (a refused handshake never reaches the consumer)."""
    raw: list[tuple[bytes, bytes]] = [(b"host", host.encode())]
    if origin is not None:
        raw.append((b"origin", origin.encode()))
    raw += [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    comm = WebsocketCommunicator(application, f"/ws/realtime/?token={token}", headers=raw)
    comm.scope["scheme"] = scheme  # as uvicorn and daphne set it (the app has not run yet)
    try:
        connected, _ = await comm.connect(timeout=5)
        if not connected:
            return False
        await comm.send_to(text_data='{"type":"ping","ref":"p"}')
        reply: Any = orjson.loads(await comm.receive_from(5))
        return reply == {"type": "pong", "ref": "p"}
    finally:
        await comm.disconnect()


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (f"https://{SITE}", True),  # same origin
        (f"HTTPS://{SITE.upper()}", True),  # case does not matter
        (f"https://{SITE}:443", True),  # the default port, spelt out
        (f"http://{SITE}", False),  # wrong scheme
        (f"https://{SITE}:8443", False),  # wrong port
        ("https://evil.example.com", False),  # wrong host
        (f"https://{SITE}.evil.test", False),  # a host that merely starts like ours
        ("null", False),  # an opaque origin (sandboxed frame, file:)
        (f"wss://{SITE}", False),  # not an http(s) origin
    ],
)
async def test_origin__against_the_handshake_on_https(token, origin, allowed):
    assert await handshake(token, origin=origin) is allowed


async def test_origin__none__non_browser_clients_are_not_checked(token):
    assert await handshake(token, origin=None) is True


async def test_origin__plain_ws_with_a_port__same_origin_only(token):
    host = f"{SITE}:8000"

    assert await handshake(token, origin=f"http://{host}", host=host, scheme="ws") is True
    assert await handshake(token, origin=f"https://{host}", host=host, scheme="ws") is False
    assert await handshake(token, origin=f"http://{SITE}", host=host, scheme="ws") is False


async def test_origin__host_not_in_allowed_hosts__refused_even_if_it_matches(token):
    assert await handshake(token, origin="https://evil.test", host="evil.test") is False


async def test_origin__no_host_header__only_trusted_origins(token):
    comm = WebsocketCommunicator(
        application,
        f"/ws/realtime/?token={token}",
        headers=[(b"origin", b"https://" + SITE.encode())],
    )
    connected, _ = await comm.connect(timeout=5)
    await comm.disconnect()

    assert connected is False


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.org", True),
        ("http://app.example.org", False),
        ("https://app.example.org:8443", False),
        ("https://www.partner.example.net", True),  # the wildcard entry
        ("https://www.partner.example.net:444", False),
        ("http://www.partner.example.net", False),
        ("https://partner.example.net.evil.test", False),
    ],
)
async def test_origin__csrf_trusted_origins(token, origin, allowed):
    assert await handshake(token, origin=origin, host=SITE, scheme="ws") is allowed


async def test_origin__forwarded_proto_ignored_unless_the_proxy_is_trusted(token, settings):
    # given: TLS ends at a proxy; the server sees plain ws, the browser's page is https
    def through_proxy() -> Any:
        return handshake(token, origin=f"https://{SITE}", scheme="ws", x_forwarded_proto="https")

    # then: untrusted, the header changes nothing: https is not this handshake's origin
    assert await through_proxy() is False

    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert await through_proxy() is True
    # ...and then the header is the scheme: plain http is no longer this origin
    assert (
        await handshake(token, origin=f"http://{SITE}", scheme="ws", x_forwarded_proto="https")
        is False
    )
