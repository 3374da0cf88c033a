"""Withdrawn access ends at once (docs/security.md): a password change, staff status
removed, a couple member taken off a wedding, "sign out everywhere", and what only the
periodic re-check can see (``QuerySet.update``).

Real consumers through the ASGI application (``tests/realtime/test_consumer.py``'s
helpers); the password change also across two real server processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

from realtime import consumer_registry, tokens
from realtime.access import connections_recheck
from realtime.node import get_node
from realtime.tokens import TokenInvalid, token_authenticate, token_issue, tokens_revoke_all
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.realtime import test_consumer, test_e2e
from tests.realtime.test_consumer import Conn, world
from tests.realtime.test_e2e import open_ws
from weddings.models import Booking, SupplierMembership

# The fixtures of the consumer and end-to-end tests, used here as they are.
opened = test_consumer.opened
servers = test_e2e.servers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

PUBLISH = {"type": "publish", "event": "message.posted", "payload": {"text": "x"}}


async def close_code(conn: Conn, timeout: float = 5) -> int:
    """The close code the server sends next (frames before it are skipped)."""
    while True:
        out = await conn.comm.receive_output(timeout)
        if out["type"] == "websocket.close":
            return out["code"]


async def subscribed(conn: Conn, *topics: str) -> None:
    reply = await conn.request({"type": "subscribe", "topics": {t: {} for t in topics}})
    assert all(reply["topics"][t]["status"] == "ok" for t in topics), reply


async def quiet(conn: Conn) -> None:
    """Nothing withdrawn: no ``unsubscribed`` and no close within a moment."""
    frames = list(conn.backlog)
    conn.backlog.clear()
    while not await conn.comm.receive_nothing(0.3):
        out = await conn.comm.receive_output(1)
        assert out["type"] != "websocket.close", out
        frames.append(orjson.loads(out["text"]))
    assert not [f for f in frames if f["type"] == "unsubscribed"], frames


async def unsubscribed_topics(conn: Conn, count: int) -> set[str]:
    notices = [await conn.recv_type("unsubscribed") for _ in range(count)]
    assert all(n["code"] == "forbidden" for n in notices)
    return {n["topic"] for n in notices}


@database_sync_to_async
def change_password(user: Any) -> None:
    user = get_user_model().objects.get(pk=user.pk)  # as the admin does: a full save
    user.set_password("a-new-password")
    user.save()


# --- signals ----------------------------------------------------------------------------


async def test_password_change__sockets_close_4001_and_tokens_refused(opened):
    w = await world()
    token = await database_sync_to_async(token_issue)(user=w["photographer"])
    conn, _, _ = await opened(token=token)
    other, _, _ = await opened(user=w["planner"])  # someone else's connection stays
    await subscribed(conn, w["a"].topic)
    await subscribed(other, w["a"].topic)

    await change_password(w["photographer"])

    assert await close_code(conn) == 4001
    with pytest.raises(TokenInvalid):
        await database_sync_to_async(token_authenticate)(token)
    assert (await other.request({"type": "ping"}))["type"] == "pong"
    again, _, _ = await opened(token=token)
    assert await close_code(again) == 4001


async def test_saves_of_other_fields__nothing_happens(opened):
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    await subscribed(conn, w["a"].topic)

    @database_sync_to_async
    def rename() -> None:
        user = get_user_model().objects.get(pk=w["photographer"].pk)
        user.first_name = "Renamed"
        user.save()

    await rename()
    assert (await conn.request({"type": "ping"}))["type"] == "pong"
    await quiet(conn)


async def test_deactivated__still_closes_4001(opened):
    w = await world()
    conn, _, _ = await opened(user=w["couple"])
    await conn.request({"type": "ping"})  # connected and registered

    @database_sync_to_async
    def deactivate() -> None:
        user = get_user_model().objects.get(pk=w["couple"].pk)
        user.is_active = False
        user.save()

    await deactivate()
    assert await close_code(conn) == 4001


async def test_staff_removed__staff_only_topics_unsubscribed_own_kept_publish_refused(opened):
    w = await world()
    staff = w["staff"]

    @database_sync_to_async
    def also_photographer() -> None:  # a vendor of A too
        SupplierMembership.objects.create(supplier=w["photo_co"], user=staff)

    await also_photographer()
    conn, _, _ = await opened(user=staff)
    await subscribed(conn, "ops", w["a"].topic, w["b"].topic)

    @database_sync_to_async
    def demote() -> None:
        user = get_user_model().objects.get(pk=staff.pk)
        user.is_staff = False
        user.save()

    await demote()
    assert await unsubscribed_topics(conn, 2) == {"ops", w["b"].topic}
    # the connection now acts as the user is: no publish on the other wedding
    reply = await conn.request({**PUBLISH, "topic": w["b"].topic})
    assert reply["code"] == "forbidden"
    reply = await conn.request({**PUBLISH, "topic": w["a"].topic})
    assert reply["status"] == "ok"
    await quiet(conn)


@pytest.mark.parametrize("side", ["wedding.couple.remove", "user.couple_weddings.remove"])
async def test_couple_member_removed__wedding_unsubscribed(opened, side):
    w = await world()
    conn, _, _ = await opened(user=w["couple"])
    await subscribed(conn, w["a"].topic)

    @database_sync_to_async
    def remove() -> None:
        if side == "wedding.couple.remove":
            w["a"].couple.remove(w["couple"])
        else:
            w["couple"].couple_weddings.remove(w["a"])

    await remove()
    assert await unsubscribed_topics(conn, 1) == {w["a"].topic}
    assert (await conn.request({"type": "ping"}))["type"] == "pong"


@pytest.mark.parametrize("side", ["wedding.couple.clear", "user.couple_weddings.clear"])
async def test_couple_cleared__wedding_unsubscribed(opened, side):
    w = await world()
    conn, _, _ = await opened(user=w["couple"])
    await subscribed(conn, w["a"].topic)

    @database_sync_to_async
    def clear() -> None:
        if side == "wedding.couple.clear":
            w["a"].couple.clear()
        else:
            w["couple"].couple_weddings.clear()

    await clear()
    assert await unsubscribed_topics(conn, 1) == {w["a"].topic}


def test_booking_ended__http_history_and_publish_refused_at_once():
    # given: a photographer reading and publishing over HTTP with a token; both requests
    # have cached the photographer's access
    wedding, photographer = make_wedding(), make_user()
    booking = make_booking(supplier=make_supplier(users=(photographer,)), wedding=wedding)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=photographer)}")
    path = f"/api/weddings/{wedding.pk}/events"
    body = orjson.dumps({"event": "message.posted", "payload": {"text": "x"}})
    assert client.get(path).status_code == 200
    assert client.post(path, body, content_type="application/json").status_code == 201

    # when: the booking ends
    booking.active = False
    booking.save()

    # then: the next history page and publish are the hidden wedding's 404
    assert client.get(path).status_code == 404
    assert client.post(path, body, content_type="application/json").status_code == 404


# --- sign out everywhere -----------------------------------------------------------------


def test_fingerprint__version_0_is_the_fingerprint_tokens_had_before():
    user = make_user()
    legacy = user.get_session_auth_hash()[:12]  # what _fingerprint was
    assert tokens._fingerprint(user) == tokens._fingerprint(user, 0) == legacy
    assert tokens._fingerprint(user, 1) != legacy
    # a token issued before versions existed (payload built the old way) still works
    old = tokens._signer().sign_object({"u": user.pk, "e": 2**40, "f": legacy})
    assert token_authenticate(old).pk == user.pk


async def test_tokens_revoke_all__closes_sockets_4001_and_refuses_old_tokens(opened):
    w = await world()
    token = await database_sync_to_async(token_issue)(user=w["planner"])
    conn, _, _ = await opened(token=token)
    await subscribed(conn, w["a"].topic)
    assert (await database_sync_to_async(token_authenticate)(token)).pk == w["planner"].pk

    version = await database_sync_to_async(tokens_revoke_all)(w["planner"])

    assert version == 1
    assert await close_code(conn) == 4001
    with pytest.raises(TokenInvalid):  # the cached version was dropped
        await database_sync_to_async(token_authenticate)(token)
    fresh = await database_sync_to_async(token_issue)(user=w["planner"])
    conn, _, _ = await opened(token=fresh)
    assert (await conn.request({"type": "ping"}))["type"] == "pong"


def test_sign_out_everywhere__ends_every_session_and_token_csrf_protected():
    user = make_user()
    token = token_issue(user=user)
    here, there = Client(enforce_csrf_checks=True), Client()
    for client in (here, there):
        client.force_login(user)
        assert client.get("/").status_code == 200
    # without the CSRF token: refused, nothing ended
    assert here.post("/accounts/logout/everywhere/").status_code == 403
    assert token_authenticate(token).pk == user.pk

    page = here.get("/")
    assert b'formaction="/accounts/logout/everywhere/"' in page.content
    csrf = here.cookies["csrftoken"].value
    response = here.post("/accounts/logout/everywhere/", HTTP_X_CSRFTOKEN=csrf)

    assert response.status_code == 302 and response["Location"].endswith("/accounts/login/")
    for client in (here, there):  # both browsers are signed out
        assert client.get("/").status_code == 302
    with pytest.raises(TokenInvalid):
        token_authenticate(token)


# --- the periodic re-check (what no signal sees) ------------------------------------------


async def test_bulk_updates__periodic_recheck_closes_and_unsubscribes(opened, settings):
    settings.REALTIME_ACCESS_RECHECK = 0.3
    w = await world()
    deactivated, _, _ = await opened(user=w["couple"])
    repassworded, _, _ = await opened(user=w["planner"])
    unbooked, _, _ = await opened(user=w["photographer"])
    kept, _, _ = await opened(user=w["other"])
    for conn in (deactivated, repassworded):
        await conn.request({"type": "ping"})  # connected and registered
    await subscribed(unbooked, w["a"].topic)
    await subscribed(kept, w["b"].topic)

    @database_sync_to_async
    def bulk_updates() -> None:
        users = get_user_model().objects
        users.filter(pk=w["couple"].pk).update(is_active=False)
        users.filter(pk=w["planner"].pk).update(password="md5$x$y")
        Booking.objects.filter(supplier=w["photo_co"]).update(active=False)

    await bulk_updates()
    # within REALTIME_ACCESS_RECHECK (plus the check itself)
    assert await close_code(deactivated, 3) == 4001
    assert await close_code(repassworded, 3) == 4001
    assert await unsubscribed_topics(unbooked, 1) == {w["a"].topic}
    assert (await unbooked.request({"type": "ping"}))["type"] == "pong"
    await quiet(kept)


async def test_recheck__token_version_bumped_without_notice_closes(opened, settings):
    from realtime.models import TokenVersion

    w = await world()
    conn, _, _ = await opened(user=w["planner"])
    await conn.request({"type": "ping"})  # connected and registered

    @database_sync_to_async
    def bump_silently() -> None:
        TokenVersion.objects.create(user=w["planner"], version=3)

    await bump_silently()
    await get_node().consumers.recheck_access()
    assert await close_code(conn) == 4001


async def test_recheck__in_batches_of_connections_each_applied(opened, monkeypatch):
    # given three open connections, and a batch of two connections at a time
    w = await world()
    couple, _, _ = await opened(user=w["couple"])
    planner, _, _ = await opened(user=w["planner"])
    other, _, _ = await opened(user=w["other"])
    for conn in (couple, planner, other):
        await conn.request({"type": "ping"})  # connected and registered
    sizes: list[int] = []

    def counted(connections: list) -> Any:
        sizes.append(len(connections))
        return connections_recheck(connections)

    monkeypatch.setattr(consumer_registry, "connections_recheck", counted)
    monkeypatch.setattr(consumer_registry, "RECHECK_BATCH", 2)

    @database_sync_to_async
    def deactivate() -> None:
        get_user_model().objects.filter(pk=w["couple"].pk).update(is_active=False)

    await deactivate()
    await get_node().consumers.recheck_access()

    # then two database calls, and each batch's verdicts were applied
    assert sizes == [2, 1]
    assert await close_code(couple, 3) == 4001
    for kept in (planner, other):
        assert (await kept.request({"type": "ping"}))["type"] == "pong"


async def test_recheck__a_connection_closed_meanwhile_is_not_checked(opened, monkeypatch):
    # given two connections, checked one a batch
    w = await world()
    first, _, _ = await opened(user=w["planner"])
    second, _, _ = await opened(user=w["other"])
    for conn in (first, second):
        await conn.request({"type": "ping"})  # connected and registered
    consumers = get_node().consumers.consumers()
    checked: list[list[int]] = []

    def closing_the_rest(connections: list) -> Any:
        # while the first batch is read, the other connection starts closing
        checked.append([user.pk for user, *_ in connections])
        for consumer in consumers:
            if consumer.user.pk != connections[0][0].pk:
                consumer.closing = True
        return connections_recheck(connections)

    monkeypatch.setattr(consumer_registry, "connections_recheck", closing_the_rest)
    monkeypatch.setattr(consumer_registry, "RECHECK_BATCH", 1)

    await get_node().consumers.recheck_access(consumers)

    # then one database call: the closing connection was skipped, not checked
    assert len(checked) == 1


def test_connections_recheck__queries_do_not_grow_with_connections(
    django_assert_max_num_queries,
):
    wedding = make_wedding()
    staff = make_user(is_staff=True)
    users = [make_user() for _ in range(40)]
    for user in users[:20]:
        make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
    for user in users[20:30]:
        wedding.couple.add(user)
    connections = [(u, [wedding.topic]) for u in users for _ in range(3)]
    connections.append((staff, ["ops", wedding.topic]))

    with django_assert_max_num_queries(8):  # a few per RECHECK_BATCH users, not per connection
        verdicts, now = connections_recheck(connections)

    assert verdicts[: 30 * 3] == [[]] * 90
    assert verdicts[30 * 3 : 40 * 3] == [[wedding.topic]] * 30
    assert verdicts[-1] == []
    assert set(now) == {u.pk for u in users} | {staff.pk}


# --- across processes -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_password_change__closes_on_both_processes_within_5s(servers):
    @database_sync_to_async
    def seed() -> dict[str, Any]:
        wedding = make_wedding()
        changed, kept = make_user(), make_user()
        for user in (changed, kept):
            make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
        return {
            "topic": wedding.topic,
            "changed": changed,
            "tokens": [token_issue(user=changed), token_issue(user=kept)],
        }

    world_ = await seed()
    topic = world_["topic"]
    revoked = [await open_ws(server, world_["tokens"][0]) for server in servers]
    kept = [await open_ws(server, world_["tokens"][1]) for server in servers]
    for ws in revoked + kept:
        reply = await ws.request({"type": "subscribe", "topics": {topic: {}}})
        assert reply["topics"][topic]["status"] == "ok"

    loop = asyncio.get_running_loop()
    started = loop.time()
    await change_password(world_["changed"])

    for ws in revoked:
        await asyncio.wait_for(ws.ws.wait_closed(), 5 - (loop.time() - started))
        assert ws.ws.close_code == 4001
        await asyncio.gather(ws.reader, return_exceptions=True)
    # and the changed user's token no longer opens a connection on either process
    for server in servers:
        ws = await open_ws(server, world_["tokens"][0])
        await asyncio.wait_for(ws.ws.wait_closed(), 5)
        assert ws.ws.close_code == 4001
        await asyncio.gather(ws.reader, return_exceptions=True)
    for ws in kept:
        assert (await ws.request({"type": "ping"}))["type"] == "pong"
        await ws.close()
