"""The lean path of the token API (wedsync/token_api.py), through the real ASGI application.

Bearer requests under /api/ go through ``TokenApiHandler``; everything else through
Django's handler with the full middleware. Both must answer alike: the same status,
the same security headers, the same JSON errors.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator
from django.core.asgi import get_asgi_application

from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from wedsync.asgi import application
from wedsync.server.token_api import TOKEN_API_MIDDLEWARE, TokenApiHandler, is_token_api_request

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

# The response headers the security middleware of the full chain sets on an API answer.
SECURITY_HEADERS = {
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
    "cross-origin-opener-policy",
}


async def request(
    app: Any, method: str, path: str, token: str | None = None, body: bytes = b"", **extra: str
) -> tuple[int, dict[str, str], bytes]:
    headers = [(b"host", b"testserver")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if body:
        headers.append((b"content-type", b"application/json"))
    headers += [(name.encode(), value.encode()) for name, value in extra.items()]
    comm = HttpCommunicator(app, method, path, body=body, headers=headers)
    response = await comm.get_response(timeout=10)
    await comm.wait(timeout=10)  # the handler's end of request (signals) ran
    names = {k.decode().lower(): v.decode() for k, v in response["headers"]}
    return response["status"], names, response["body"]


@pytest.fixture
async def vendor() -> dict[str, Any]:
    @database_sync_to_async
    def seed() -> dict[str, Any]:
        user = make_user()
        wedding = make_wedding()
        make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
        return {"token": token_issue(user=user), "wedding": wedding.pk}

    return await seed()


# --- routing ------------------------------------------------------------------------------


def scope(path: str, headers: list[tuple[bytes, bytes]], root_path: str = "") -> dict:
    return {"type": "http", "path": path, "root_path": root_path, "headers": headers}


BEARER = [(b"authorization", b"Bearer abc")]


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("path", "headers", "lean"),
    [
        ("/api/weddings/1/", BEARER, True),
        ("/api/weddings/1/events", BEARER, True),
        ("/api/weddings/1/", [(b"cookie", b"sessionid=x")], False),  # a browser
        ("/api/weddings/1/", [(b"authorization", b"Basic abc")], False),
        ("/api/weddings/1/", [], False),
        ("/weddings/1/", BEARER, False),  # the web app
        ("/metrics", BEARER, False),
        ("/admin/", BEARER, False),
    ],
)
def test_is_token_api_request__bearer_under_api_only(path, headers, lean):
    assert is_token_api_request(scope(path, headers)) is lean


@pytest.mark.django_db(transaction=False)
def test_is_token_api_request__path_below_the_root_path():
    assert is_token_api_request(scope("/sync/api/weddings/", BEARER, root_path="/sync"))
    assert not is_token_api_request(scope("/sync/web/", BEARER, root_path="/sync"))


# --- same answers as the full chain -------------------------------------------------------


async def test_bearer_read__same_status_body_and_security_headers_as_the_full_chain(vendor):
    # given the full chain alone (what served every request before the lean path)
    full = get_asgi_application()
    path = f"/api/weddings/{vendor['wedding']}/"

    # when
    lean_status, lean_headers, lean_body = await request(application, "GET", path, vendor["token"])
    full_status, full_headers, full_body = await request(full, "GET", path, vendor["token"])

    # then
    assert lean_status == full_status == 200
    assert orjson.loads(lean_body) == orjson.loads(full_body)
    assert SECURITY_HEADERS <= set(lean_headers)
    assert {k: lean_headers[k] for k in SECURITY_HEADERS} == {
        k: full_headers[k] for k in SECURITY_HEADERS
    }
    assert lean_headers["content-type"] == "application/json"
    assert int(lean_headers["content-length"]) == len(lean_body)


async def test_bad_token__401_json_with_the_security_headers(vendor):
    path = f"/api/weddings/{vendor['wedding']}/"

    status, headers, body = await request(application, "GET", path, vendor["token"] + "x")

    assert status == 401
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] == "unauthenticated"
    assert SECURITY_HEADERS <= set(headers)


async def test_unknown_api_path__404_json_on_the_lean_path(vendor):
    status, _, body = await request(application, "GET", "/api/nothing-here", vendor["token"])

    assert status == 404
    assert orjson.loads(body)["error"]["code"] == "not_found"
    assert b"Traceback" not in body


async def test_missing_slash__redirected_as_by_the_full_chain(vendor):
    path = f"/api/weddings/{vendor['wedding']}"

    lean = await request(application, "GET", path, vendor["token"])
    full = await request(get_asgi_application(), "GET", path, vendor["token"])

    assert lean[0] == full[0] == 301
    assert lean[1]["location"] == full[1]["location"] == f"{path}/"


async def test_disallowed_host__json_400_on_the_lean_path(vendor):
    comm = HttpCommunicator(
        application,
        "GET",
        "/api/weddings/",
        headers=[
            (b"host", b"evil.example"),
            (b"authorization", f"Bearer {vendor['token']}".encode()),
        ],
    )
    response = await comm.get_response(timeout=10)
    await comm.wait(timeout=10)

    assert response["status"] == 400
    assert orjson.loads(response["body"])["error"]["code"] == "bad_request"


async def test_sync_views__publish_and_history_work_on_the_lean_path(vendor):
    # given: the publish and history views are sync; they run in the request's thread
    base = f"/api/weddings/{vendor['wedding']}/events"
    post = orjson.dumps({"event": "message.posted", "payload": {"text": "hi"}})

    # when
    published = await request(application, "POST", base, vendor["token"], body=post)
    history = await request(application, "GET", f"{base}?since=0", vendor["token"])

    # then (no CSRF for a token, as before)
    assert published[0] == 201, published[2]
    assert history[0] == 200
    assert [e["payload"]["text"] for e in orjson.loads(history[2])["events"]] == ["hi"]


# --- request threads ----------------------------------------------------------------------


async def test_request_threads__reused_not_started_per_request(vendor, settings):
    settings.REALTIME_USER_SNAPSHOT_BURST = 1000  # 31 snapshots of one user: not the budget
    path = f"/api/weddings/{vendor['wedding']}/"
    await request(application, "GET", path, vendor["token"])  # warm: caches and threads
    started = {t.ident for t in threading.enumerate()}

    for _ in range(30):
        assert (await request(application, "GET", path, vendor["token"]))[0] == 200

    new = [t for t in threading.enumerate() if t.ident not in started]
    assert len(new) <= 1, [t.name for t in new]


@pytest.mark.django_db(transaction=False)
def test_handler__chain_is_the_lean_middleware_and_settings_are_left_as_they_were():
    from django.conf import settings

    before = list(settings.MIDDLEWARE)
    handler = TokenApiHandler()

    names, layer = [], handler._middleware_chain
    while layer is not None:  # each layer wraps the middleware (functools.wraps)
        instance = getattr(layer, "__wrapped__", layer)
        if inspect.isfunction(instance):  # a function middleware: its closure holds the rest
            names.append(f"{instance.__module__}.{instance.__qualname__.split('.')[0]}")
            layer = inspect.getclosurevars(instance).nonlocals.get("get_response")
        else:
            names.append(f"{type(instance).__module__}.{type(instance).__name__}")
            layer = getattr(instance, "get_response", None)
    assert names[:-1] == TOKEN_API_MIDDLEWARE
    assert settings.MIDDLEWARE == before
