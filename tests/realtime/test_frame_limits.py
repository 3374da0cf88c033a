"""Per-user budgets of subscribe (topics and replayed events), presence and ack frames
(realtime/limits.py ``FRAME_BUDGETS``; PROTOCOL §8, docs/security.md "No member can flood a
wedding"): shared by a user's connections and processes, refusals are strikes (4008)."""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

import pytest
from channels.db import database_sync_to_async

from realtime.errors import RealtimeError
from realtime.limits import TokenBucket, UserLimits
from realtime.services import event_publish_system
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.realtime.test_consumer import opened, world  # noqa: F401 - fixtures

NEVER = 0.001  # a rate that refills nothing during a test


@database_sync_to_async
def _store(topic: str, count: int) -> None:
    for i in range(count):
        event_publish_system(topic, "message.posted", {"text": f"missed {i}"})


async def _subscribe(conn: Any, topics: dict[str, dict]) -> dict[str, Any]:
    return await conn.request({"type": "subscribe", "topics": topics})


# --- subscribe ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_frames__subscribe_since_0_cycles_are_refused_after_the_replay_budget(
    opened,  # noqa: F811
    settings,
):
    # given: a replay budget of 100 events that does not refill, a topic with 30 events
    settings.REALTIME_USER_REPLAY_RATE = NEVER
    settings.REALTIME_USER_REPLAY_BURST = 100
    w = await world()
    topic = w["a"].topic
    await _store(topic, 30)
    conn, _, _ = await opened(user=w["photographer"])

    # when: 20 subscribe(since=0)/unsubscribe cycles
    replies, replayed = [], 0
    for _ in range(20):
        reply = await _subscribe(conn, {topic: {"since": 0}})
        replies.append(reply)
        if reply["status"] == "ok":
            replayed += len(await conn.events(30))
        await conn.request({"type": "unsubscribe", "topics": [topic]})

    # then: 3 replays (90 events) passed, the 4th (30 more than the 10 left) and every
    # later one were refused before anything was replayed
    assert [r["status"] for r in replies] == ["ok"] * 3 + ["error"] * 17
    refused = replies[3:]
    assert {r["code"] for r in refused} == {"rate_limited"}
    assert all(r["retry_after_ms"] > 0 and "topics" not in r for r in refused)
    assert replayed == 90
    assert await conn.nothing()  # not a single replayed event more


@pytest.mark.django_db(transaction=True)
async def test_frames__a_refused_replay_leaves_the_topic_unsubscribed(opened, settings):  # noqa: F811
    settings.REALTIME_USER_REPLAY_RATE = NEVER
    settings.REALTIME_USER_REPLAY_BURST = 5
    w = await world()
    topic = w["a"].topic
    await _store(topic, 10)
    conn, _, _ = await opened(user=w["photographer"])
    # the first replay (10 > the burst of 5) passes on a full bucket: one reconnect is
    # never refused, however large; it leaves the budget in debt
    assert (await _subscribe(conn, {topic: {"since": 0}}))["status"] == "ok"
    await conn.events(10)
    await conn.request({"type": "unsubscribe", "topics": [topic]})

    # when: the next replay is refused
    reply = await _subscribe(conn, {topic: {"since": 5}})
    assert reply["code"] == "rate_limited"

    # then: the topic is not subscribed: a new event does not arrive
    await _store(topic, 1)
    assert await conn.nothing()
    # and a subscribe that replays nothing still passes
    reply = await _subscribe(conn, {topic: {}})
    assert reply["status"] == "ok" and reply["topics"][topic]["seq"] == 11


@pytest.mark.django_db(transaction=True)
async def test_frames__each_topic_subscribed_takes_a_token(opened, settings):  # noqa: F811
    settings.REALTIME_USER_SUBSCRIBE_RATE = NEVER
    settings.REALTIME_USER_SUBSCRIBE_BURST = 3
    w = await world()
    conn, _, _ = await opened(user=w["planner"])
    topic = w["a"].topic

    statuses = []
    for _ in range(5):
        statuses.append((await _subscribe(conn, {topic: {}})).get("code", "ok"))
        if statuses[-1] == "ok":  # a topic already subscribed adds nothing, costs nothing
            assert (await _subscribe(conn, {topic: {}}))["status"] == "ok"
        await conn.request({"type": "unsubscribe", "topics": [topic]})

    assert statuses == ["ok"] * 3 + ["rate_limited"] * 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_frames__a_normal_reconnect_with_20_topics_and_missed_events_passes(
    opened,  # noqa: F811
):
    # given: defaults; a planner on 20 weddings with 15 events each (300 missed)
    @database_sync_to_async
    def planner_on_20() -> tuple[Any, list[str]]:
        user = make_user()
        company = make_supplier(category="planner", users=(user,))
        weddings = [make_wedding() for _ in range(20)]
        for wedding in weddings:
            make_booking(supplier=company, wedding=wedding)
        return user, [wedding.topic for wedding in weddings]

    user, topics = await planner_on_20()
    for topic in topics:
        await _store(topic, 15)

    # when: the phone and a browser tab each reconnect twice in a row, resubscribing every
    # topic with since=0 (as clients/python and the web app do after a drop)
    for _ in range(2):
        for _device in range(2):
            conn, _, _ = await opened(user=user)
            reply = await _subscribe(conn, {t: {"since": 0} for t in topics})

            # then: never refused; every missed event is replayed
            assert reply["status"] == "ok", reply
            assert all(
                s == {"status": "ok", "seq": 15, "recovered": True, "epoch": ANY}
                for s in reply["topics"].values()
            )
            assert len(await conn.events(300)) == 300
            await conn.comm.disconnect()


# --- presence and ack --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_frames__a_presence_flood_is_refused_then_closed_4008(opened, settings):  # noqa: F811
    settings.REALTIME_USER_PRESENCE_RATE = NEVER
    settings.REALTIME_USER_PRESENCE_BURST = 5
    settings.REALTIME_RATE_LIMIT_STRIKES = 3
    w = await world()
    conn, _, _ = await opened(user=w["photographer"])
    topic = w["a"].topic

    codes = []
    for i in range(8):
        await conn.send({"type": "presence", "ref": str(i), "topic": topic})
        frame = await conn.recv_type("reply")
        codes.append(frame.get("code", "ok"))
        if len(codes) == 8 or codes.count("rate_limited") == 3:
            break

    assert codes == ["ok"] * 5 + ["rate_limited"] * 3
    out = await conn.comm.receive_output(5)
    assert out["type"] == "websocket.close" and out["code"] == 4008


@pytest.mark.django_db(transaction=True)
async def test_frames__an_ack_flood_is_refused(opened, settings):  # noqa: F811
    settings.REALTIME_USER_ACK_RATE = NEVER
    settings.REALTIME_USER_ACK_BURST = 5
    w = await world()
    topic = w["a"].topic
    await _store(topic, 1)
    conn, _, _ = await opened(user=w["photographer"])

    replies = [await conn.request({"type": "ack", "topic": topic, "seq": 1}) for _ in range(7)]

    assert [r["status"] for r in replies] == ["ok"] * 5 + ["error"] * 2
    assert all(r["code"] == "rate_limited" and r["retry_after_ms"] > 0 for r in replies[5:])


@pytest.mark.django_db(transaction=True)
async def test_frames__connections_of_one_user_share_the_budgets(opened, settings):  # noqa: F811
    settings.REALTIME_USER_PRESENCE_RATE = NEVER
    settings.REALTIME_USER_PRESENCE_BURST = 4
    settings.REALTIME_USER_REPLAY_RATE = NEVER
    settings.REALTIME_USER_REPLAY_BURST = 40
    w = await world()
    topic = w["a"].topic
    await _store(topic, 30)
    first, _, _ = await opened(user=w["photographer"])
    second, _, _ = await opened(user=w["photographer"])
    presence = {"type": "presence", "topic": topic}

    codes = [(await c.request(presence)).get("code", "ok") for c in (first, second) * 3]
    assert codes == ["ok"] * 4 + ["rate_limited"] * 2

    # the replay budget too: 30 of 40 on the first connection, the second is refused
    assert (await _subscribe(first, {topic: {"since": 0}}))["status"] == "ok"
    assert (await _subscribe(second, {topic: {"since": 0}}))["code"] == "rate_limited"
    # while another user has budgets of their own
    planner, _, _ = await opened(user=w["planner"])
    assert (await planner.request(presence))["status"] == "ok"
    assert (await _subscribe(planner, {topic: {"since": 0}}))["status"] == "ok"


# --- the buckets -------------------------------------------------------------------------


def test_token_bucket__a_cost_takes_that_many_tokens_and_may_leave_debt() -> None:
    bucket = TokenBucket(rate=10, burst=100)

    assert bucket.allow(0.0, cost=60) is True
    assert bucket.allow(0.0, cost=60) is False  # 40 left
    assert bucket.retry_after(0.0, cost=60) == pytest.approx(2.0)
    # a cost above the burst passes on a full bucket, and the debt is paid back at the rate
    assert bucket.allow(10.0, cost=250) is True
    assert bucket.allow(10.0) is False
    assert bucket.retry_after(10.0) == pytest.approx(15.1)
    assert bucket.allow(25.1) is True


async def test_user_limits__frame_budgets_fall_back_to_this_process_while_redis_is_down(settings):
    settings.REALTIME_USER_REPLAY_RATE = NEVER
    settings.REALTIME_USER_REPLAY_BURST = 100
    settings.REALTIME_USER_ACK_RATE = NEVER
    settings.REALTIME_USER_ACK_BURST = 2
    limits = UserLimits("redis://127.0.0.1:1/0", "test-down")

    await limits.check_frame("replay", 7, 60)
    await limits.check_frame("replay", 7, 0)  # nothing replayed: nothing taken
    with pytest.raises(RealtimeError) as info:
        await limits.check_frame("replay", 7, 60)
    assert info.value.code == "rate_limited"
    await limits.check_frame("ack", 7)
    await limits.check_frame("ack", 7)
    with pytest.raises(RealtimeError):
        await limits.check_frame("ack", 7)
    assert limits.breaker is not None and limits.breaker.state == "open"


@pytest.mark.redis
async def test_user_limits__two_processes_share_a_costed_budget_in_redis(
    redis_url, redis_key_prefix
):
    one = UserLimits(redis_url, redis_key_prefix)
    two = UserLimits(redis_url, redis_key_prefix)

    assert await one.take("replay", 7, NEVER, 100, 60) == 0.0
    assert await two.take("replay", 7, NEVER, 100, 60) > 1  # 40 left
    assert await two.take("replay", 7, NEVER, 100, 40) == 0.0
    # a cost above the burst passes on a full bucket (another user's), leaving debt
    assert await one.take("replay", 8, 10, 100, 250) == 0.0
    wait = await two.take("replay", 8, 10, 100, 1)
    assert 14 < wait < 16
