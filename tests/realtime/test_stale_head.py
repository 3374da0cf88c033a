"""The hub's memory never answers a subscribe with a seq below the log's head
(PROTOCOL §4, §7): after events reached a process only through the event log (a Redis
outage lost their broadcast; the sweep filled them in), a new subscriber there is told
the true seq and gets every missed event.

Two real server processes on a Redis of the test's own, which is killed and restarted;
and the shortcut itself (``Recent``) on the two paths that tell it the head moved.
"""

from __future__ import annotations

import asyncio
from unittest.mock import ANY

import pytest
from channels.db import database_sync_to_async

from realtime.models import Event
from realtime.replay import Recent, sync_from_memory
from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.realtime.test_e2e import Ws, open_ws
from tests.realtime.test_faults import FAST, wait_readiness
from tests.servers import RedisServer, Server


@database_sync_to_async
def seed() -> dict:
    wedding = make_wedding()
    users = [make_user() for _ in range(3)]
    for user in users:
        make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
    return {"topic": wedding.topic, "tokens": [token_issue(user=u) for u in users]}


async def publish(ws: Ws, topic: str, text: str) -> int:
    reply = await ws.request(
        {"type": "publish", "topic": topic, "event": "message.posted", "payload": {"text": text}}
    )
    assert reply["status"] == "ok", reply
    return reply["seq"]


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
async def test_after_a_redis_outage__a_new_subscriber_is_told_the_true_seq():
    # given processes A and B on one Redis, a subscriber on A, five events through B
    redis = RedisServer()
    a, b = (Server("uvicorn", REDIS_URL=redis.url, REALTIME_SWEEP_INTERVAL="1", **FAST)
            for _ in range(2))  # fmt: skip
    try:
        world = await seed()
        topic, tokens = world["topic"], world["tokens"]
        old = await open_ws(a, tokens[0])
        assert (await old.request({"type": "subscribe", "topics": {topic: {}}}))["status"] == "ok"
        planner = await open_ws(b, tokens[1])
        for i in range(5):
            await publish(planner, topic, f"before {i}")
        await old.wait_events(5)
        assert [e["seq"] for e in old.events] == [1, 2, 3, 4, 5]

        # when Redis dies, three events are stored and acknowledged through B (their
        # broadcasts fail), and Redis comes back
        redis.kill()
        acked = [await publish(planner, topic, f"during {i}") for i in range(3)]
        assert acked == [6, 7, 8]
        redis.start()
        for server in (a, b):
            await wait_readiness(server, "ready")
        await old.wait_events(8)  # the sweep filled A's subscriber in from the log
        assert [e["seq"] for e in old.events] == list(range(1, 9))

        # then a new connection on A subscribing with since=5 is told seq 8, and gets 6-8
        new = await open_ws(a, tokens[2])
        reply = await new.request({"type": "subscribe", "topics": {topic: {"since": 5}}})
        assert reply["topics"][topic] == {"status": "ok", "seq": 8, "recovered": True, "epoch": ANY}
        await new.wait_events(3)
        assert [e["seq"] for e in new.events] == [6, 7, 8]
        stored = await database_sync_to_async(Event.objects.filter(topic=topic).count)()
        assert stored == 8
        for ws in (old, planner, new):
            await ws.close()
    finally:
        for server in (a, b):
            server.stop()
        redis.stop()


def _recent_with(*seqs: int) -> Recent:
    recent = Recent(max_events=100, max_age=3600)
    for seq in seqs:
        recent.add(seq, f"frame {seq}", now=0.0)
    return recent


def test_recent__an_event_seen_from_the_log_beyond_its_head_forgets_the_memory():
    # given memory of 1-5
    recent = _recent_with(1, 2, 3, 4, 5)

    # when a connection gets 6 from the log (the hub never received it)
    recent.saw(6)

    # then subscribes go to the log
    assert sync_from_memory(recent, 5) is None


def test_recent__an_event_seen_from_the_log_within_its_head_changes_nothing():
    # a gap fill of 3 after the hub itself received 4 (and started afresh after the gap)
    recent = _recent_with(1, 2, 4)

    recent.saw(3)

    assert recent.last == 4


def test_recent__the_head_still_ahead_at_the_next_sweep_forgets_the_memory():
    # given memory of 1-5 and the log's head at 8 (events the hub missed)
    recent = _recent_with(1, 2, 3, 4, 5)

    # when one sweep reads the head (they may be in flight: nothing yet)
    recent.check_head(8)
    assert sync_from_memory(recent, 5) is not None
    # and the next still finds the memory short of it
    recent.check_head(8)

    # then
    assert sync_from_memory(recent, 5) is None


def test_recent__events_in_flight_at_one_sweep_and_received_by_the_next_keep_it():
    recent = _recent_with(1, 2, 3)
    recent.check_head(5)  # 4 and 5 are on their way

    recent.add(4, "frame 4", now=0.0)
    recent.add(5, "frame 5", now=0.0)
    recent.check_head(5)

    assert sync_from_memory(recent, 3).events == [(4, "frame 4"), (5, "frame 5")]


@pytest.mark.django_db(transaction=True)
async def test_sweep__checks_the_memory_of_a_lingering_topic_too():
    from realtime.delivery import topic_positions
    from realtime.node import get_node

    # given the hub remembers a topic no local connection follows, up to seq 2
    world = await seed()
    topic = world["topic"]
    node = get_node()
    recent = Recent(max_events=100, max_age=3600)
    recent.add(1, "1", now=0.0)
    recent.add(2, "2", now=0.0)
    node.hub.recent[topic] = recent

    @database_sync_to_async
    def store(n: int) -> None:
        from realtime import services

        with_broadcast = services.broadcast_event
        services.broadcast_event = lambda event: None
        try:
            for i in range(n):
                services.event_publish_system(topic, "message.posted", {"text": str(i)})
        finally:
            services.broadcast_event = with_broadcast

    # when three events are stored that the layer never carried, and the sweep runs twice
    await store(3)
    try:
        await node.consumers.sweep(topic_positions)
        await node.consumers.sweep(topic_positions)

        # then the memory is forgotten (a subscribe now reads the log)
        assert recent.last is None
    finally:
        node.hub.recent.pop(topic, None)
        await asyncio.sleep(0)
