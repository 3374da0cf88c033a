"""One user's costly frames take turns in a process (realtime/limits.py ``UserSlots``,
``REALTIME_USER_CONCURRENT_FRAMES``; docs/security.md "No member can flood a wedding"):
a member with twenty connections holds one frame's worth of the process at a time, and
nobody else waits behind them."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from realtime.limits import UserSlots, user_slots
from realtime.services import event_publish_system
from tests.realtime.test_consumer import opened, world  # noqa: F401 - fixtures

# --- UserSlots --------------------------------------------------------------------------


async def test_slots__one_users_holders_take_turns_others_do_not_wait():
    # given: one slot per user
    slots = UserSlots(1)
    inside: dict[int, int] = {1: 0, 2: 0}
    most: dict[int, int] = {1: 0, 2: 0}
    release = asyncio.Event()
    order: list[str] = []

    async def frame(user: int, name: str) -> None:
        async with slots.hold(user):
            inside[user] += 1
            most[user] = max(most[user], inside[user])
            order.append(name)
            await release.wait()
            inside[user] -= 1

    # when: three frames of user 1 and one of user 2 arrive together
    tasks = [asyncio.create_task(frame(1, f"u1-{i}")) for i in range(3)]
    tasks.append(asyncio.create_task(frame(2, "u2")))
    await asyncio.sleep(0.05)

    # then: user 2's frame runs beside user 1's first; user 1's others wait their turn
    assert order == ["u1-0", "u2"]
    assert slots.busy(1) == 3 and slots.busy(2) == 1
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["u1-0", "u2", "u1-1", "u1-2"]
    assert most == {1: 1, 2: 1}
    # and nothing is kept for a user with no frame in flight
    assert slots.busy(1) == 0 and slots.busy(2) == 0
    assert not slots._held


async def test_slots__a_failing_frame_frees_its_slot():
    slots = UserSlots(1)
    with pytest.raises(RuntimeError):
        async with slots.hold(7):
            raise RuntimeError("the handler failed")
    async with asyncio.timeout(1):
        async with slots.hold(7):
            assert slots.busy(7) == 1
    assert slots.busy(7) == 0


# --- through the consumer ---------------------------------------------------------------


@database_sync_to_async
def _store(topic: str, count: int) -> None:
    for i in range(count):
        event_publish_system(topic, "message.posted", {"text": f"missed {i}"})


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_consumer__a_users_frames_wait_for_its_slot_other_users_do_not(opened, settings):  # noqa: F811
    # given: the photographer's slot held (by another of its frames, say)
    settings.REALTIME_USER_CONCURRENT_FRAMES = 1
    w = await world()
    topic = w["a"].topic
    photographer, _, _ = await opened(user=w["photographer"])
    planner, _, _ = await opened(user=w["planner"])
    held, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with user_slots().hold(w["photographer"].pk):
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()

    # when: the photographer subscribes, the planner subscribes
    await photographer.send({"type": "subscribe", "ref": "p1", "topics": {topic: {}}})
    planner_reply = await planner.request({"type": "subscribe", "topics": {topic: {}}})

    # then: the planner is answered; the photographer's frame waits
    assert planner_reply["status"] == "ok"
    assert await photographer.nothing()

    # when: the slot is free again
    release.set()
    await holder

    # then: the waiting subscribe is answered
    reply = await photographer._take(lambda f: f.get("ref") == "p1", 5)
    assert reply["status"] == "ok"
    assert user_slots().busy(w["photographer"].pk) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_consumer__a_replay_is_written_after_the_slot_is_free(opened, settings):  # noqa: F811
    # given: 40 stored events and an outbox of 4 frames, so the replay can only be
    # written as the client reads it
    settings.REALTIME_USER_CONCURRENT_FRAMES = 1
    settings.REALTIME_OUTBOX_SIZE = 4
    w = await world()
    topic = w["a"].topic
    await _store(topic, 40)
    conn, _, _ = await opened(user=w["photographer"])

    # when: it subscribes with since=0
    reply = await conn.request({"type": "subscribe", "topics": {topic: {"since": 0}}})

    # then: answered, and the user's slot is free while the replay is still being
    # written (another of its frames would not wait for a slow phone's replay)
    assert reply["status"] == "ok"
    assert user_slots().busy(w["photographer"].pk) == 0
    events = await conn.events(40)
    assert [e["seq"] for e in events] == list(range(1, 41))
