"""Connect tickets (PROTOCOL §2, v1.1; docs/security.md): bought over HTTP with a bearer
token or a session, used by one WebSocket handshake, refused (close 4001) when used
again, expired, unknown, or when the user's credentials were withdrawn in between.

Both stores run for real: Redis (``REDIS_URL``, as in CI) and the database (the embedded
default, forced with ``settings.REDIS_URL = ""``; PostgreSQL in CI, SQLite locally).
Consumers through the real ASGI application; the last tests use two real server
processes and read their access logs.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.client
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import AsyncClient
from django.utils.crypto import get_random_string
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import tests.servers
from realtime import tickets
from realtime.models import ConnectTicket, TokenVersion
from realtime.node import get_node
from realtime.tickets import (
    DatabaseTicketStore,
    Grant,
    RedisTicketStore,
    TicketExpired,
    aticket_authenticate,
    ticket_issue,
)
from realtime.tokens import CONNECT_VERSION_ATTR, token_issue, tokens_revoke_all
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.monitoring.test_health import dead_redis_url
from tests.realtime.test_consumer import HOST, ORIGIN, Conn, world
from tests.servers import Server
from wedsync.asgi import application
from wedsync.server.asgi_server import RedactTokens, asgi_server_command, redact_tokens

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

TICKET_URL = "/api/realtime/ticket"
JSON = "application/json"


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(params=["redis", "database"])
def store(request: pytest.FixtureRequest, settings: Any) -> str:
    """Each test using it runs on both stores: Redis (skipped, or failing in CI, without
    one) and the database, which the embedded default (no REDIS_URL) uses."""
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    else:
        settings.REDIS_URL = ""
    return request.param


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch):
    """The ticket clock, frozen at the real time; returns a function that moves it on."""
    now = [time.time()]
    monkeypatch.setattr(tickets, "_now", lambda: now[0])

    def advance(seconds: float) -> None:
        now[0] += seconds

    return advance


@pytest.fixture
async def ws():
    """Opens WebSocket connections through the ASGI application; disconnects them all."""
    comms: list[WebsocketCommunicator] = []

    async def open_(*, ticket: str | None = None, query: str = "", headers: list | None = None):
        if ticket is not None:
            query = f"?ticket={ticket}"
        comm = WebsocketCommunicator(application, f"/ws/realtime/{query}", headers=headers or [])
        comms.append(comm)
        connected, _ = await comm.connect(timeout=5)
        assert connected  # refusals are accepted then closed, never refused at the handshake
        return Conn(comm)

    yield open_
    for comm in comms:
        await comm.disconnect()


async def outcome(conn: Conn) -> str | int:
    """``"pong"`` when the connection is authenticated, else the close code it got."""
    await conn.send({"type": "ping", "ref": "p"})
    out = await conn.comm.receive_output(5)
    if out["type"] == "websocket.close":
        return out["code"]
    assert orjson.loads(out["text"]) == {"type": "pong", "ref": "p"}
    return "pong"


async def close_code(conn: Conn, timeout: float = 5) -> int:
    """The close code the server sends next (frames before it are skipped)."""
    while True:
        out = await conn.comm.receive_output(timeout)
        if out["type"] == "websocket.close":
            return out["code"]


async def bearer_headers(user: Any, ttl: int | None = None) -> dict[str, str]:
    token = await database_sync_to_async(token_issue)(user=user, ttl=ttl)
    return {"Authorization": f"Bearer {token}"}


async def buy(user: Any, **headers: str) -> Any:
    """POST /api/realtime/ticket with a bearer token of ``user``; the response."""
    headers = headers or await bearer_headers(user)
    return await AsyncClient().post(TICKET_URL, b"", content_type=JSON, headers=headers)


async def ticket_for(user: Any) -> str:
    response = await buy(user)
    assert response.status_code == 200, response.content
    return orjson.loads(response.content)["ticket"]


async def subscribes(conn: Conn, topic: str) -> bool:
    reply = await conn.request({"type": "subscribe", "topics": {topic: {}}})
    return reply["status"] == "ok" and reply["topics"][topic]["status"] == "ok"


@database_sync_to_async
def withdraw(user: Any, how: str) -> None:
    """Withdraw ``user``'s credentials as the product does: a full save of the user (as
    the admin and the password form do), or "sign out everywhere"."""
    fresh = get_user_model().objects.get(pk=user.pk)
    if how == "password changed":
        fresh.set_password("a-new-password")
        fresh.save()
    elif how == "deactivated":
        fresh.is_active = False
        fresh.save()
    else:
        tokens_revoke_all(fresh)


def digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


# --- POST /api/realtime/ticket -----------------------------------------------------------


async def test_ticket_api__bearer__issues_an_opaque_ticket_for_30s(store):
    user = await database_sync_to_async(make_user)()

    response = await buy(user)

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == JSON
    assert response["Cache-Control"] == "no-store"
    body = orjson.loads(response.content)
    assert set(body) == {"ticket", "expires_in"}
    assert body["expires_in"] == 30
    assert len(body["ticket"]) == 43  # secrets.token_urlsafe(32), URL-safe as it is
    assert "." not in body["ticket"]  # not a signed token: it carries nothing


async def test_ticket_api__session_needs_csrf_and_then_issues_one_that_connects(ws, store):
    # given a signed-in browser session
    w = await world()
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(w["planner"])

    # when it asks without the CSRF token, then it is refused
    refused = await client.post(TICKET_URL, b"", content_type=JSON)
    assert refused.status_code == 403
    assert orjson.loads(refused.content)["error"]["code"] == "csrf_failed"

    # when it asks with it
    secret = get_random_string(32)
    client.cookies[django_settings.CSRF_COOKIE_NAME] = secret
    response = await client.post(
        TICKET_URL, b"", content_type=JSON, headers={"X-CSRFToken": secret}
    )

    # then the ticket authenticates the page's WebSocket (an allowed Origin)
    assert response.status_code == 200, response.content
    ticket = orjson.loads(response.content)["ticket"]
    conn = await ws(ticket=ticket, headers=[ORIGIN, HOST])
    assert await subscribes(conn, w["a"].topic)


async def test_ticket_api__anonymous_401_get_405():
    anonymous = await AsyncClient().post(TICKET_URL, b"", content_type=JSON)
    assert anonymous.status_code == 401
    assert orjson.loads(anonymous.content)["error"]["code"] == "unauthenticated"
    user = await database_sync_to_async(make_user)()
    get = await AsyncClient().get(TICKET_URL, headers=await bearer_headers(user))
    assert get.status_code == 405


async def test_ticket_api__bought_with_a_bearer_token__never_outlives_it(store):
    # given a token with 10 s left
    user = await database_sync_to_async(make_user)()

    # when it buys a ticket
    response = await buy(user, **await bearer_headers(user, ttl=10))

    # then the ticket lives no longer than the token
    assert response.status_code == 200, response.content
    assert orjson.loads(response.content)["expires_in"] <= 10


async def test_ticket_api__shares_the_token_issue_budget(settings, store):
    # given a budget of 3 issues a user, refilled slowly
    settings.REALTIME_TOKEN_ISSUE_BURST = 3
    settings.REALTIME_TOKEN_ISSUE_PER_MINUTE = 0.5
    user = await database_sync_to_async(make_user)()
    headers = await bearer_headers(user)
    client = AsyncClient()

    async def token() -> int:
        response = await client.post(
            "/api/realtime/token", b"{}", content_type=JSON, headers=headers
        )
        return response.status_code

    # when it buys two tokens and a ticket, then a ticket and a token more
    statuses = [await token(), await token(), (await buy(user, **headers)).status_code]
    over = await buy(user, **headers)
    statuses += [over.status_code, await token()]

    # then the ticket counted against the tokens' budget, and over it both are refused
    assert statuses == [200, 200, 200, 429, 429]
    error = orjson.loads(over.content)["error"]
    assert error["code"] == "rate_limited" and error["retry_after_ms"] > 0
    other = await database_sync_to_async(make_user)()
    assert (await buy(other)).status_code == 200  # another user's budget is their own


async def test_ticket_api__store_unreachable__503_and_handshakes_refused(ws, settings, caplog):
    # given a Redis that does not answer
    user = await database_sync_to_async(make_user)()
    headers = await bearer_headers(user)
    settings.REDIS_URL = dead_redis_url()

    # when a ticket is bought, then the answer is 503 (never a ticket nobody can check)
    response = await buy(user, **headers)
    assert response.status_code == 503
    assert orjson.loads(response.content)["error"]["code"] == "unavailable"

    # and a handshake with a ticket fails closed, logging nothing of the ticket
    ticket = "x" * 43
    assert await outcome(await ws(ticket=ticket)) == 4001
    assert any("store is unreachable" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if ticket in r.getMessage()]


# --- the handshake -------------------------------------------------------------------------


async def test_ticket__connects_once_then_closes_4001(ws, store):
    # given a ticket bought over HTTP
    w = await world()
    ticket = await ticket_for(w["photographer"])

    # when a handshake uses it, then the connection is the user's
    conn = await ws(ticket=ticket)
    assert await subscribes(conn, w["a"].topic)
    assert not await subscribes(conn, w["b"].topic)  # and has that user's rights only

    # when a second handshake uses it, then it is accepted and closed with 4001
    again = await ws(ticket=ticket)
    assert await outcome(again) == 4001
    assert await outcome(conn) == "pong"  # the first stays open


async def test_ticket__valid_until_its_last_moment_then_expired(ws, store, clock):
    # given two tickets bought now
    user = await database_sync_to_async(make_user)()
    early, late = await ticket_for(user), await ticket_for(user)

    # when 29.9 s have passed, then one still connects
    clock(29.9)
    assert await outcome(await ws(ticket=early)) == "pong"

    # when 30 s have passed, then the other is expired: 4001
    clock(0.1)
    assert await outcome(await ws(ticket=late)) == 4001


async def test_ticket__expired__refused_as_expired_and_used_up(store, clock):
    user = await database_sync_to_async(make_user)()
    ticket, _ = await ticket_issue(user=user)

    clock(3600)

    with pytest.raises(TicketExpired):
        await aticket_authenticate(ticket)
    clock(-3600)  # even back in its lifetime, it was used up
    with pytest.raises(tickets.TicketInvalid):
        await aticket_authenticate(ticket)


@pytest.mark.parametrize(
    "query",
    [
        "?ticket=" + "A" * 43,  # well formed, never issued
        "?ticket=not-a-ticket",
        "?ticket=" + "A" * 5000,
        "?ticket=%00%FF",
    ],
    ids=["unknown", "malformed", "long", "binary"],
)
async def test_ticket__unknown_or_malformed__closes_4001(ws, store, query):
    assert await outcome(await ws(query=query)) == 4001


@pytest.mark.parametrize("how", ["password changed", "deactivated", "signed out everywhere"])
async def test_ticket__credentials_withdrawn_between_buying_and_using__4001(ws, store, how):
    # given a ticket bought with the user's current credentials
    user = await database_sync_to_async(make_user)()
    ticket = await ticket_for(user)

    # when they are withdrawn before it is used
    await withdraw(user, how)

    # then the handshake is refused
    assert await outcome(await ws(ticket=ticket)) == 4001


async def test_ticket__foreign_origin__refused_at_the_handshake_ticket_kept(store):
    # given a ticket, and a page of another site that got hold of it
    user = await database_sync_to_async(make_user)()
    ticket = await ticket_for(user)
    foreign = [(b"origin", b"https://evil.test"), HOST]
    comm = WebsocketCommunicator(application, f"/ws/realtime/?ticket={ticket}", headers=foreign)

    # when that page connects with it, then the handshake is refused (HTTP 403)
    connected, _ = await comm.connect(timeout=5)
    await comm.disconnect()
    assert not connected

    # and the ticket was not used up: a foreign page cannot burn a user's ticket
    assert (await aticket_authenticate(ticket)).pk == user.pk


async def test_ticket__token_and_ticket__token_authenticates_ticket_kept(ws, store):
    # given a token and a ticket of two users
    alice, bob = await database_sync_to_async(lambda: (make_user(), make_user()))()
    token = await database_sync_to_async(token_issue)(user=alice)
    ticket = await ticket_for(bob)

    # when a handshake carries both, then the token decides (v1 unchanged)
    both = await ws(query=f"?token={token}&ticket={ticket}")
    assert await outcome(both) == "pong"

    # and the ticket was not used up
    user = await aticket_authenticate(ticket)
    assert user.pk == bob.pk


async def test_ticket__token_alone_still_works(ws, store):
    user = await database_sync_to_async(make_user)()
    token = await database_sync_to_async(token_issue)(user=user)

    assert await outcome(await ws(query=f"?token={token}")) == "pong"


# --- revocation of an open ticket connection --------------------------------------------


async def test_ticket_connection__sign_out_everywhere_closes_it_4001(ws, store):
    # given a connection opened with a ticket
    w = await world()
    conn = await ws(ticket=await ticket_for(w["photographer"]))
    assert await subscribes(conn, w["a"].topic)

    # when the user signs out everywhere
    await withdraw(w["photographer"], "signed out everywhere")

    # then it closes, as a token connection does
    assert await close_code(conn) == 4001


async def test_ticket_connection__password_change_closes_it_4001(ws, store):
    user = await database_sync_to_async(make_user)()
    conn = await ws(ticket=await ticket_for(user))
    assert await outcome(conn) == "pong"

    await withdraw(user, "password changed")

    assert await close_code(conn) == 4001


async def test_ticket_connection__version_bumped_without_notice__recheck_closes_it(ws, store):
    # given a ticket connection, tagged with the token version it was checked against
    user = await database_sync_to_async(make_user)()
    ticket = await ticket_for(user)
    tagged = await aticket_authenticate(await ticket_for(user))
    assert getattr(tagged, CONNECT_VERSION_ATTR) == 0
    conn = await ws(ticket=ticket)
    assert await outcome(conn) == "pong"

    # when the version changes with no signal (a bulk write)
    await database_sync_to_async(TokenVersion.objects.bulk_create)(
        [TokenVersion(user_id=user.pk, version=3)]
    )

    # then the periodic access re-check closes it
    await get_node().consumers.recheck_access()
    assert await close_code(conn) == 4001


# --- single use under concurrency --------------------------------------------------------


async def test_ticket__two_simultaneous_handshakes__exactly_one_authenticated(store):
    # given one ticket
    user = await database_sync_to_async(make_user)()
    ticket = await ticket_for(user)
    comms = [WebsocketCommunicator(application, f"/ws/realtime/?ticket={ticket}") for _ in "ab"]
    try:
        # when two handshakes present it at the same time
        connected = await asyncio.gather(*(comm.connect(timeout=5) for comm in comms))
        assert all(ok for ok, _ in connected)
        outcomes = await asyncio.gather(*(outcome(Conn(comm)) for comm in comms))

        # then exactly one is authenticated, the other closed with 4001
        assert sorted(outcomes, key=str) == [4001, "pong"]
    finally:
        for comm in comms:
            await comm.disconnect()


async def test_store__concurrent_takes__exactly_one_gets_the_grant(store):
    # given a grant waiting in the store under test
    user = await database_sync_to_async(make_user)()
    grant = Grant(user.pk, 0, "f" * 12, time.time() + 30)
    kept = tickets.get_ticket_store()
    assert isinstance(kept, RedisTicketStore if store == "redis" else DatabaseTicketStore)
    await kept.put("d" * 64, grant, 30)

    # when 12 takes race for it (Redis connections, or database threads)
    taken = await asyncio.gather(*(tickets.get_ticket_store().take("d" * 64) for _ in range(12)))

    # then one gets it, whole, and every other finds nothing
    assert [t for t in taken if t is not None] == [grant]
    assert taken.count(None) == 11


# --- what the stores keep -----------------------------------------------------------------


async def test_redis_store__keeps_the_digest_only_for_the_ttl(redis_url, settings):
    user = await database_sync_to_async(make_user)()
    ticket = await ticket_for(user)
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{settings.CACHE_NAMESPACE}:ticket:*"))
        assert [k.decode() for k in keys] == [f"{settings.CACHE_NAMESPACE}:ticket:{digest(ticket)}"]
        assert 0 < client.ttl(keys[0]) <= 30
        assert ticket.encode() not in client.get(keys[0])

        await aticket_authenticate(ticket)

        assert not client.exists(keys[0])
    finally:
        client.close()


async def test_database_store__keeps_the_digest_and_cleans_expired_rows(settings, clock):
    # given the embedded default's store and a ticket nobody used, expired since
    settings.REDIS_URL = ""
    user = await database_sync_to_async(make_user)()
    await ticket_issue(user=user)
    clock(31)

    # when the next ticket is issued
    fresh, _ = await ticket_issue(user=user)

    # then only its row is left, keyed by its digest; no column holds a ticket
    rows = await database_sync_to_async(lambda: list(ConnectTicket.objects.values()))()
    assert [r["digest"] for r in rows] == [digest(fresh)]
    assert not [v for v in rows[0].values() if isinstance(v, str) and fresh in v]
    # and using it deletes it
    assert (await aticket_authenticate(fresh)).pk == user.pk
    assert not await database_sync_to_async(ConnectTicket.objects.exists)()


# --- never in a log -------------------------------------------------------------------------


async def test_ticket__never_in_a_log_record(ws, store, settings, caplog):
    # given every logger at DEBUG, SQL included (DEBUG logs every query with its values)
    settings.DEBUG = True
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    user = await database_sync_to_async(make_user)()

    # when a ticket is bought, used, used again, and an unknown one tried
    ticket = await ticket_for(user)
    assert await outcome(await ws(ticket=ticket)) == "pong"
    assert await outcome(await ws(ticket=ticket)) == 4001
    unknown = get_random_string(43)
    assert await outcome(await ws(ticket=unknown)) == 4001

    # then no record carries either (the records were captured: there are some)
    assert caplog.records
    texts = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert not [t for t in texts if ticket in t or unknown in t]


def test_log_filter__redacts_ticket_values():
    # given log lines with a ticket in a URL, as uvicorn's access log writes them
    ticket = "Zm9vYmFy_-x" * 4
    line = f'127.0.0.1:5 - "WebSocket /ws/realtime/?ticket={ticket}&x=1" [accepted]'
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s", (line,), None)

    # when the handlers' filter sees them
    RedactTokens().filter(record)

    # then the value is gone, the rest kept
    assert record.getMessage() == (
        '127.0.0.1:5 - "WebSocket /ws/realtime/?ticket=[redacted]&x=1" [accepted]'
    )
    assert redact_tokens(f"GET /?Ticket={ticket} HTTP/1.1") == "GET /?Ticket=[redacted] HTTP/1.1"
    assert redact_tokens("a connect ticket and a token") == "a connect ticket and a token"


# --- two real server processes -------------------------------------------------------------


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch):
    """Two server processes sharing the store (Redis in CI, else the test database),
    writing their access logs (at info)."""
    monkeypatch.setattr(
        tests.servers,
        "asgi_server_command",
        functools.partial(asgi_server_command, log_level="info"),
    )
    running: list[Server] = []
    try:
        running.extend(Server("uvicorn", LOG_LEVEL="INFO") for _ in range(2))
        yield running
    finally:
        for server in running:
            server.stop()


def http_ticket(server: Server, token: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request(
            "POST", TICKET_URL, headers={"Host": "127.0.0.1", "Authorization": f"Bearer {token}"}
        )
        response = conn.getresponse()
        body = orjson.loads(response.read())
        assert response.status == 200, body
        return body
    finally:
        conn.close()


async def ws_outcome(server: Server, ticket: str, topic: str | None = None) -> str | int:
    """``"pong"`` (and ``"subscribed"`` with ``topic``) or the close code, over a real socket."""
    async with connect(f"{server.ws_url}?ticket={ticket}") as sock:
        try:
            await sock.send('{"type":"ping","ref":"p"}')
            assert orjson.loads(await asyncio.wait_for(sock.recv(), 15))["type"] == "pong"
            if topic is None:
                return "pong"
            frame = {"type": "subscribe", "ref": "s", "topics": {topic: {}}}
            await sock.send(orjson.dumps(frame).decode())
            reply = orjson.loads(await asyncio.wait_for(sock.recv(), 15))
            return "subscribed" if reply["topics"][topic]["status"] == "ok" else "refused"
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_two_processes__single_use_across_them_and_never_in_their_logs(servers):
    # given a booked vendor with a token, and two server processes
    @database_sync_to_async
    def seed() -> tuple[str, str]:
        wedding, user = make_wedding(), make_user()
        make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
        return wedding.topic, token_issue(user=user)

    topic, token = await seed()
    one, two = servers

    # when a ticket bought from one process is used on the other, then it connects
    ticket = (await asyncio.to_thread(http_ticket, one, token))["ticket"]
    assert await ws_outcome(two, ticket, topic) == "subscribed"
    # and used again on the first: 4001
    assert await ws_outcome(one, ticket) == 4001

    # when one ticket is presented to both processes at once, then one of them takes it
    raced = (await asyncio.to_thread(http_ticket, two, token))["ticket"]
    outcomes = await asyncio.gather(ws_outcome(one, raced), ws_outcome(two, raced))
    assert sorted(outcomes, key=str) == [4001, "pong"]

    # then both access logs show the handshakes, the tickets redacted, never a ticket
    logs = []
    for server in servers:
        deadline = time.monotonic() + 15
        while True:
            text = await asyncio.to_thread(Path(server.log.name).read_text, errors="replace")
            if text.count("/ws/realtime/?ticket=[redacted]") >= 2:
                break
            assert time.monotonic() < deadline, text[-3000:]
            await asyncio.sleep(0.05)
        logs.append(text)
    assert not [text for text in logs if ticket in text or raced in text]
