"""No member can flood a wedding (docs/security.md): per-user publish budgets shared by the
WebSocket and the HTTP API (critical events with their own, smaller one), the token
endpoint's budget, and retention that a flood cannot use to prune a wedding's state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.test import Client

from realtime import selectors
from realtime.errors import RealtimeError
from realtime.limits import PublishLimiter, UserLimits, get_user_limits
from realtime.models import Event
from realtime.services import event_publish, event_publish_system, events_prune
from realtime.tokens import token_issue
from tests.realtime.test_consumer import opened, world  # noqa: F401 - fixtures
from tests.realtime.test_topics import make_world

JSON = "application/json"


def _emergency(text: str = "x" * 4000) -> dict[str, Any]:
    return {"kind": "medical", "text": text}


# --- WebSocket ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_flood__emergencies_from_one_socket_get_their_own_small_budget(opened, settings):  # noqa: F811
    # given: defaults (critical: 1/s, burst 5); the cap of open emergencies out of the way
    settings.REALTIME_OPEN_EMERGENCIES_PER_USER = 1000
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    topic = w["a"].topic

    # when: 30 emergencies with 4,000-character texts as fast as the socket takes them
    started = time.monotonic()
    frame = {"type": "publish", "topic": topic, "event": "emergency.raised"}
    replies = [await conn.request({**frame, "payload": _emergency()}) for _ in range(30)]
    elapsed = time.monotonic() - started

    # then: the burst and what refilled passed; every other one was told to retry later
    ok = [r for r in replies if r["status"] == "ok"]
    refused = [r for r in replies if r["status"] != "ok"]
    assert 5 <= len(ok) <= 5 + int(elapsed) + 1
    assert {r["code"] for r in refused} == {"rate_limited"}
    assert all(r["retry_after_ms"] > 0 for r in refused)
    stored = await database_sync_to_async(
        Event.objects.filter(topic=topic, event="emergency.raised").count
    )()
    assert stored == len(ok)
    # and ordinary events still go through: their budget is another one
    reply = await conn.request(
        {"type": "publish", "topic": topic, "event": "message.posted", "payload": {"text": "hi"}}
    )
    assert reply["status"] == "ok"


async def _close_code(conn: Any, timeout: float = 5) -> int:
    while True:
        out = await conn.comm.receive_output(timeout)
        if out["type"] == "websocket.close":
            return out["code"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_flood__pings_are_limited_per_connection_then_4008_and_a_cooldown(
    opened,  # noqa: F811
    settings,
):
    # given: every frame limited to 5/s (burst 10) per connection, 20 strikes to close,
    # and a reconnect cool-down of 1 s
    settings.REALTIME_FRAME_RATE, settings.REALTIME_FRAME_BURST = 5.0, 10
    settings.REALTIME_RATE_LIMIT_STRIKES = 20
    settings.REALTIME_RECONNECT_COOLDOWN = 1.0
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])

    # when: pings as fast as the socket takes them
    for i in range(40):
        await conn.send({"type": "ping", "ref": f"p{i}"})
    frames = []
    while (out := await conn.comm.receive_output(5))["type"] != "websocket.close":
        frames.append(orjson.loads(out["text"]))

    # then: the burst was answered, the rest refused, and the connection closed 4008
    assert out["code"] == 4008
    assert [f["type"] for f in frames[:10]] == ["pong"] * 10
    refused = [f for f in frames if f["type"] == "reply"]
    assert refused and {f["code"] for f in refused} == {"rate_limited"}
    # and the user's next connection within the cool-down is closed at once, the same way
    again, connected, _ = await opened(user=w["photographer"])
    assert connected and await _close_code(again) == 4008
    # after it, connections are accepted again
    await asyncio.sleep(1.1)
    later, _, _ = await opened(user=w["photographer"])
    assert (await later.request({"type": "ping"}))["type"] == "pong"


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_flood__refused_frames_cost_no_redis_call(opened, settings, monkeypatch):  # noqa: F811
    # given: a connection already over its frame limit (burst 2, no refill to speak of)
    settings.REALTIME_FRAME_RATE, settings.REALTIME_FRAME_BURST = 0.001, 2
    settings.REALTIME_RATE_LIMIT_STRIKES = 0  # never close: count what reaches Redis
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    for _ in range(2):
        await conn.request({"type": "ping"})
    taken: list[str] = []
    limits = get_user_limits()
    original = limits.take

    async def counting_take(budget, *args, **kwargs):
        taken.append(budget)
        return await original(budget, *args, **kwargs)

    monkeypatch.setattr(limits, "take", counting_take)

    # when: presence requests, acks and publishes keep coming
    replies = [
        await conn.request(frame)
        for frame in (
            {"type": "presence", "topic": w["a"].topic},
            {"type": "ack", "topic": w["a"].topic, "seq": 1},
            {"type": "publish", "topic": w["a"].topic, "event": "message.posted",
             "payload": {"text": "x"}},
        )
    ]  # fmt: skip

    # then: each refused with rate_limited, and no per-user budget was asked
    assert [r["code"] for r in replies] == ["rate_limited"] * 3
    assert taken == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_flood__the_budget_is_per_user_across_connections_and_the_http_api(
    opened,  # noqa: F811
    settings,
):
    # given: a user budget of 5 that does not refill during the test
    settings.REALTIME_USER_PUBLISH_RATE = 0.001
    settings.REALTIME_USER_PUBLISH_BURST = 5
    w = await world()
    first, _, _ = await opened(user=w["photographer"])
    second, _, _ = await opened(user=w["photographer"])
    topic = w["a"].topic
    frame = {"type": "publish", "topic": topic, "event": "message.posted"}

    # when: 3 publishes on each connection
    codes = []
    for conn in (first, second):
        for i in range(3):
            reply = await conn.request({**frame, "payload": {"text": str(i)}})
            codes.append(reply.get("code", "ok"))

    # then: 5 in all passed, the 6th (on the second connection) was refused
    assert codes == ["ok"] * 5 + ["rate_limited"]

    # and the HTTP API draws on the same budget
    def http_publish() -> Any:
        return _bearer_client(w["photographer"]).post(
            f"/api/weddings/{w['a'].pk}/events",
            orjson.dumps({"event": "message.posted", "payload": {"text": "http"}}),
            content_type=JSON,
        )

    response = await database_sync_to_async(http_publish)()
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    # while another user has a budget of their own
    reply = await (await opened(user=w["planner"]))[0].request(
        {**frame, "payload": {"text": "planner"}}
    )
    assert reply["status"] == "ok"


async def test_flood__a_refusal_of_the_user_budget_is_a_strike_of_the_connection(settings):
    settings.REALTIME_USER_PUBLISH_RATE = 0.001
    settings.REALTIME_USER_PUBLISH_BURST = 1
    settings.REDIS_URL = ""  # this process's budget
    limiter = PublishLimiter(strikes=3, window=10)
    user_id = 10**9 + 1

    await limiter.acheck("message.posted", user_id, now=0.0)
    for i in range(3):
        with pytest.raises(RealtimeError) as info:
            await limiter.acheck("message.posted", user_id, now=0.1 * (i + 1))
        assert info.value.code == "rate_limited"

    assert limiter.should_close is True


# --- HTTP --------------------------------------------------------------------------------


def _bearer_client(user: Any) -> Client:
    """A client that sends ``user``'s realtime token with every request."""
    return Client(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}")


@pytest.mark.django_db
def test_flood__http_publish_answers_429_over_the_user_budget():
    # given: defaults (20/s, burst 40)
    world_ = make_world()
    client = _bearer_client(world_.photographer)
    path = f"/api/weddings/{world_.wedding.pk}/events"

    # when: 60 publishes at once
    started = time.monotonic()
    statuses = []
    for i in range(60):
        response = client.post(
            path,
            orjson.dumps({"event": "message.posted", "payload": {"text": str(i)}}),
            content_type=JSON,
        )
        statuses.append(response.status_code)
    elapsed = time.monotonic() - started

    # then: the burst and what refilled were stored, the rest refused with 429
    created = statuses.count(201)
    assert 40 <= created <= 40 + int(20 * elapsed) + 1
    assert statuses.count(429) == 60 - created
    body = response.json() if response.status_code == 429 else None
    if body is not None:
        assert body["error"]["code"] == "rate_limited" and body["error"]["retry_after_ms"] > 0


@pytest.mark.django_db
def test_flood__http_publish_over_the_budget_is_refused_without_a_query(
    settings, django_assert_num_queries
):
    # given: a publish budget of 2 that does not refill, spent; the member's access and
    # token cached by those two publishes
    settings.REALTIME_USER_PUBLISH_RATE, settings.REALTIME_USER_PUBLISH_BURST = 0.001, 2
    world_ = make_world()
    client = _bearer_client(world_.photographer)
    path = f"/api/weddings/{world_.wedding.pk}/events"
    body = orjson.dumps({"event": "message.posted", "payload": {"text": "hi"}})
    assert [client.post(path, body, content_type=JSON).status_code for _ in range(2)] == [201] * 2

    # when / then: the next one is refused, and the database was not asked anything
    with django_assert_num_queries(0):
        response = client.post(path, body, content_type=JSON)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    # a wedding the member may not see is still the same 404, not a 429
    hidden = f"/api/weddings/{world_.other_wedding.pk}/events"
    assert client.post(hidden, body, content_type=JSON).status_code == 404


@pytest.mark.django_db
def test_flood__http_emergencies_have_the_critical_budget(settings):
    settings.REALTIME_OPEN_EMERGENCIES_PER_USER = 1000  # the budget, not the cap
    world_ = make_world()
    client = _bearer_client(world_.photographer)
    path = f"/api/weddings/{world_.wedding.pk}/events"

    statuses = [
        client.post(
            path,
            orjson.dumps({"event": "emergency.raised", "payload": _emergency()}),
            content_type=JSON,
        ).status_code
        for _ in range(10)
    ]

    assert 5 <= statuses.count(201) <= 7
    assert statuses.count(429) == 10 - statuses.count(201)


@pytest.mark.django_db
def test_flood__token_issues_are_limited_per_user():
    world_ = make_world()
    client = _bearer_client(world_.photographer)

    statuses = [
        client.post("/api/realtime/token", b"{}", content_type=JSON).status_code for _ in range(12)
    ]

    assert statuses[:10] == [200] * 10
    assert statuses[10:] == [429, 429]
    other = _bearer_client(world_.planner)
    assert other.post("/api/realtime/token", b"{}", content_type=JSON).status_code == 200


# --- shared across processes, and Redis down --------------------------------------------


@pytest.mark.redis
async def test_user_limits__two_processes_share_one_budget_in_redis(redis_url, redis_key_prefix):
    # two UserLimits on one Redis: two server processes
    one = UserLimits(redis_url, redis_key_prefix)
    two = UserLimits(redis_url, redis_key_prefix)

    waits = [await (one, two)[i % 2].take("publish", 7, 0.001, 4) for i in range(6)]

    assert waits[:4] == [0.0] * 4
    assert all(wait > 1 for wait in waits[4:])  # retry after, in seconds
    # another user is not affected
    assert await two.take("publish", 8, 0.001, 4) == 0.0


def _bucket_written_at(redis_url: str, limits: UserLimits, budget: str, user_id: int) -> bytes:
    """When Redis last ran the take script on the bucket (it writes ``ts`` every time)."""
    import redis

    return redis.Redis.from_url(redis_url).hget(limits.key(budget, user_id), "ts")


@pytest.mark.redis
async def test_user_limits__a_refusal_is_repeated_without_redis_until_the_units_can_be_there(
    redis_url, redis_key_prefix
):
    # given: a budget of 4 at 10 a second, spent by two takes of 2; a third refused by Redis
    limits = UserLimits(redis_url, redis_key_prefix)
    take = lambda cost: limits.take("publish_bytes", 7, 10.0, 4, cost=cost)  # noqa: E731
    assert [await take(2), await take(2)] == [0.0, 0.0]
    first = await take(2)
    written = _bucket_written_at(redis_url, limits, "publish_bytes", 7)

    # when: as many units or more are asked again at once
    again = [await take(2), await take(3)]

    # then: refused in this process, Redis not asked, within the wait Redis gave
    assert 0 < first <= 0.21
    assert all(0 < wait <= first for wait in again)
    assert _bucket_written_at(redis_url, limits, "publish_bytes", 7) == written

    # fewer units than the refused ones may be there: Redis is asked
    await take(1)
    assert _bucket_written_at(redis_url, limits, "publish_bytes", 7) != written

    # once the wait is over the units are there again, and are given
    await asyncio.sleep(0.25)
    assert await take(2) == 0.0


@pytest.mark.redis
async def test_user_limits__a_refusal_here_never_outlives_the_shared_bucket(
    redis_url, redis_key_prefix
):
    # given: two processes; the first is refused, the second's refusal comes later
    one = UserLimits(redis_url, redis_key_prefix)
    two = UserLimits(redis_url, redis_key_prefix)
    assert await one.take("presence", 9, 20.0, 1) == 0.0
    refused_one = await one.take("presence", 9, 20.0, 1)

    # when: the refill is due
    await asyncio.sleep(refused_one + 0.01)

    # then: the first process gives the token (no stale refusal), the second is refused
    assert await one.take("presence", 9, 20.0, 1) == 0.0
    assert await two.take("presence", 9, 20.0, 1) > 0


async def test_user_limits__redis_down_degrades_to_this_process(settings):
    # given: a Redis that refuses connections
    limits = UserLimits("redis://127.0.0.1:1/0", "test-down")

    # when: takes never raise, and the local bucket still limits
    waits = [await limits.take("publish", 7, 0.001, 3) for _ in range(5)]

    assert waits[:3] == [0.0] * 3
    assert all(wait > 0 for wait in waits[3:])
    assert limits.breaker is not None and limits.breaker.state == "open"


def test_user_limits__local_without_redis(settings):
    settings.REDIS_URL = ""
    assert get_user_limits().breaker is None


# --- retention ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_flood__retention_never_prunes_open_emergencies_or_latest_statuses(settings):
    # given: a small cap, an open and a resolved emergency, statuses of two suppliers
    settings.REALTIME_RETENTION_EVENTS = 20
    world_ = make_world()
    topic = world_.topic
    planner_co, photo_co = world_.planner_supplier.pk, world_.photo_supplier.pk

    def status(supplier_id: int, name: str) -> Event:
        return event_publish_system(
            topic, "vendor.status", {"supplier_id": supplier_id, "status": name}
        )

    open_one = event_publish(
        topic=topic, event="emergency.raised", payload=_emergency("fire"), user=world_.photographer
    ).event
    resolved = event_publish(
        topic=topic, event="emergency.raised", payload=_emergency("rain"), user=world_.photographer
    ).event
    event_publish(
        topic=topic, event="emergency.resolved", payload={"id": resolved.payload["id"]},
        user=world_.photographer,
    )  # fmt: skip
    old_status = status(planner_co, "on_way")
    latest_planner = status(planner_co, "arrived")
    latest_photo = status(photo_co, "arrived")

    # when: a flood of messages, far past the cap, then the hourly prune
    for n in range(100):
        event_publish_system(topic, "message.posted", {"text": f"spam {n}"})
    events_prune()

    # then: the open emergency and each supplier's latest status are kept; the rest went
    kept = set(Event.objects.filter(topic=topic).values_list("seq", flat=True))
    last = selectors.topic_seq(topic)
    assert {open_one.seq, latest_planner.seq, latest_photo.seq} <= kept
    assert resolved.seq not in kept and old_status.seq not in kept
    assert kept - {open_one.seq, latest_planner.seq, latest_photo.seq} == set(
        range(last - 19, last + 1)
    )
    # and replay knows the log is whole only from the cap on, not from the kept islands
    assert selectors.oldest_retained_seq(topic) == last - 19
    assert not selectors.replay_covers(topic, open_one.seq)
    assert selectors.replay_covers(topic, last - 20)
    # for every since, replay_covers agrees with the walk down to the gap
    for since in range(last + 2):
        covered = since >= selectors.oldest_retained_seq(topic) - 1
        assert selectors.replay_covers(topic, since) is covered, since
    # a second prune deletes nothing more
    assert events_prune() == 0


@pytest.mark.django_db
def test_flood__oldest_retained_seq_without_pruning_starts_at_the_first_status():
    world_ = make_world()
    first = event_publish_system(
        world_.topic, "vendor.status",
        {"supplier_id": world_.photo_supplier.pk, "status": "arrived"},
    )  # fmt: skip
    event_publish_system(world_.topic, "message.posted", {"text": "hi"})

    assert selectors.oldest_retained_seq(world_.topic) == first.seq == 1
    assert selectors.replay_covers(world_.topic, 0)
    # a kept kind first and a hole above it (an event deleted by hand): not whole from 0
    Event.objects.filter(topic=world_.topic, seq=2).delete()
    event_publish_system(world_.topic, "message.posted", {"text": "after the hole"})
    assert not selectors.replay_covers(world_.topic, 0)
    assert not selectors.replay_covers(world_.topic, 1)
    assert selectors.replay_covers(world_.topic, 2)


@pytest.mark.django_db
def test_flood__http_history_pages_take_from_the_replay_budget(settings):
    # given: a wedding with 30 events and a replay budget of 25 events (slow refill)
    settings.REALTIME_USER_REPLAY_RATE = 0.01
    settings.REALTIME_USER_REPLAY_BURST = 25
    world_ = make_world()
    for i in range(30):
        event_publish_system(world_.wedding.topic, "note.added", {"i": i})
    client = _bearer_client(world_.photographer)
    path = f"/api/weddings/{world_.wedding.pk}/events"

    # when: the history is read in pages of 10 from the start, again and again
    statuses = [client.get(path, {"since": 0, "limit": 10}).status_code for _ in range(4)]

    # then: two pages of 10 fit in the budget of 25, the third does not (5 left), nor
    # the fourth; another user's budget is their own
    assert statuses == [200, 200, 429, 429]
    refused = client.get(path, {"since": 0, "limit": 10}).json()
    assert refused["error"]["code"] == "rate_limited"
    other = _bearer_client(world_.planner)
    assert other.get(path, {"since": 0, "limit": 10}).status_code == 200


# --- what a refused read costs -----------------------------------------------------------


async def _replayed_once(
    open_connection, settings, monkeypatch, *, burst: int, log: int, since: int
):
    """A connection whose user's replay budget (``burst`` events, no refill) paid one
    replay after ``since`` of a log of ``log`` events (subscribed, then unsubscribed
    again); from then on the log reads of subscribes are counted in ``reads``."""
    from realtime import replay

    settings.REALTIME_USER_REPLAY_RATE, settings.REALTIME_USER_REPLAY_BURST = 0.001, burst
    w = await world()
    topic = w["a"].topic
    for n in range(log):
        await database_sync_to_async(event_publish_system)(topic, "message.posted", {"text": n})
    conn, _, _ = await open_connection(user=w["photographer"])
    first = await conn.request({"type": "subscribe", "topics": {topic: {"since": since}}})
    assert first["topics"][topic]["recovered"] is True
    await conn.request({"type": "unsubscribe", "topics": [topic]})
    reads: list[dict] = []
    read = replay.sync_topics

    async def counting(since: dict, *args: Any) -> Any:
        reads.append(since)
        return await read(since, *args)

    monkeypatch.setattr(replay, "sync_topics", counting)
    return conn, topic, reads


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_flood__a_spent_replay_budget_is_refused_before_the_log_is_read(
    opened,  # noqa: F811
    settings,
    monkeypatch,
):
    # given: a replay budget of 3 events that does not refill, spent by one replay of 5
    # (it passes on the full bucket, in debt)
    conn, topic, reads = await _replayed_once(
        opened, settings, monkeypatch, burst=3, log=5, since=0
    )

    # when: it asks for the replay again, and again
    replies = [
        await conn.request({"type": "subscribe", "topics": {topic: {"since": 0}}}) for _ in range(3)
    ]

    # then: each is refused, and the log was never read for them
    assert [r["code"] for r in replies] == ["rate_limited"] * 3
    assert reads == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_flood__a_replay_the_budget_cannot_pay_for_is_refused_before_the_log_is_read(
    opened,  # noqa: F811
    settings,
    monkeypatch,
):
    # given: a replay budget of 10 events that does not refill, 4 of them spent; a log of 8
    conn, topic, reads = await _replayed_once(
        opened, settings, monkeypatch, burst=10, log=8, since=4
    )

    # when: the whole log (8 events) is asked for, with 6 left
    refused = await conn.request({"type": "subscribe", "topics": {topic: {"since": 0}}})

    # then: refused without reading the log; a replay the 6 can pay for is read and sent
    assert refused["code"] == "rate_limited"
    assert reads == []
    again = await conn.request({"type": "subscribe", "topics": {topic: {"since": 4}}})
    assert again["topics"][topic]["recovered"] is True
    assert reads == [{topic: 4}]


def _history(settings, *, burst: int, log: int) -> tuple[Client, str]:
    """A member's client and its wedding's history path, the log ``log`` events long,
    the member's replay budget ``burst`` events that do not refill."""
    settings.REALTIME_USER_REPLAY_RATE, settings.REALTIME_USER_REPLAY_BURST = 0.001, burst
    world_ = make_world()
    for n in range(log):
        event_publish_system(world_.topic, "message.posted", {"text": n})
    return _bearer_client(world_.photographer), f"/api/weddings/{world_.wedding.pk}/events"


def _refused_unread(client: Client, url: str, assert_max_queries) -> None:
    """``url`` is refused (429 rate_limited) and no event row is read for it."""
    with assert_max_queries(8) as queries:
        response = client.get(url)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    page_reads = [q for q in queries.captured_queries if '"realtime_event"."payload"' in q["sql"]]
    assert page_reads == []


@pytest.mark.django_db(transaction=True)
def test_flood__http_history_with_a_spent_budget_is_refused_before_reading(
    settings, django_assert_max_num_queries
):
    # given: a replay budget of 3 events, spent by one page of 5
    client, path = _history(settings, burst=3, log=5)
    assert client.get(f"{path}?since=0").status_code == 200

    # when / then: the next page is refused, and no event row was read for it
    _refused_unread(client, f"{path}?since=0", django_assert_max_num_queries)


@pytest.mark.django_db(transaction=True)
def test_flood__http_history_page_the_budget_cannot_pay_for_is_refused_before_reading(
    settings, django_assert_max_num_queries
):
    # given: a replay budget of 10 events that does not refill, 4 of them spent, and a
    # history of 8 events: the next page (8) costs more than the 6 left
    client, path = _history(settings, burst=10, log=8)
    assert len(client.get(f"{path}?since=0&limit=4").json()["events"]) == 4

    # when / then: refused without reading the page
    _refused_unread(client, f"{path}?since=0", django_assert_max_num_queries)
    # a page it can pay for still passes
    assert len(client.get(f"{path}?since=4").json()["events"]) == 4


@pytest.mark.django_db(transaction=True)
def test_flood__snapshots_and_page_states_share_a_per_user_budget(settings):
    # given: a snapshot budget of 3 that does not refill
    settings.REALTIME_USER_SNAPSHOT_RATE, settings.REALTIME_USER_SNAPSHOT_BURST = 0.001, 3
    world_ = make_world()
    api = _bearer_client(world_.photographer)
    page = Client()
    page.force_login(world_.photographer)
    wedding = world_.wedding.pk

    # when: two snapshots and two page states
    statuses = [
        api.get(f"/api/weddings/{wedding}/").status_code,
        page.get(f"/weddings/{wedding}/state").status_code,
        api.get(f"/api/weddings/{wedding}/").status_code,
        page.get(f"/weddings/{wedding}/state").status_code,
    ]

    # then: three pass, the fourth is refused
    assert statuses == [200, 200, 200, 429]
    assert page.get(f"/weddings/{wedding}/state").json()["error"]["code"] == "rate_limited"
