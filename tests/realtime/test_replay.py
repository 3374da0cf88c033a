"""Where a subscribe starts (realtime/replay.py): the hub's recent events and the log."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import ANY

import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from realtime import replay
from realtime.models import Event
from realtime.node import get_hub
from realtime.replay import Recent, Sync, sync_from_memory
from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from wedsync.asgi import application


def frames(*seqs: int) -> Recent:
    recent = Recent()
    for seq in seqs:
        recent.add(seq, f"e{seq}")
    return recent


# --- Recent -------------------------------------------------------------------------------


def test_recent__keeps_consecutive_events_in_order():
    assert [seq for seq, _, _ in frames(4, 5, 6).frames] == [4, 5, 6]
    assert frames(4, 5, 6).last == 6


def test_recent__a_repeat_or_an_older_event_is_ignored():
    assert [seq for seq, _, _ in frames(4, 5, 5, 3, 6).frames] == [4, 5, 6]


def test_recent__a_gap_starts_afresh_after_it():
    assert [seq for seq, _, _ in frames(4, 5, 7, 8).frames] == [7, 8]


def test_recent__seeded_from_the_log__knows_the_seq_until_events_come():
    recent = Recent()
    recent.seed(6)
    assert sync_from_memory(recent, 6) == Sync(6, True, 6, [])
    assert sync_from_memory(recent, 5) is None  # 6 itself is not held
    recent.add(7, "e7")
    recent.seed(3)  # known already: a later read changes nothing
    assert sync_from_memory(recent, 6) == Sync(7, True, 6, [(7, "e7")])


def test_recent__reset_forgets_everything():
    recent = frames(4, 5)
    recent.reset()
    assert recent.last is None and sync_from_memory(recent, None) is None


def test_recent__bounded_in_count_and_age():
    recent = Recent(max_events=3)
    for seq in range(1, 6):
        recent.add(seq, f"e{seq}")
    assert [seq for seq, _, _ in recent.frames] == [3, 4, 5]
    recent = Recent(max_age=60)
    recent.add(1, "e1", now=0.0)
    recent.add(2, "e2", now=61.0)
    assert [seq for seq, _, _ in recent.frames] == [2]


def test_recent_bounds__never_more_than_retention(settings):
    settings.REALTIME_RETENTION_EVENTS = 10_000
    settings.REALTIME_RETENTION_DAYS = 7
    assert replay.recent_bounds() == (replay.RECENT_MAX, replay.RECENT_S)
    settings.REALTIME_RETENTION_EVENTS = 5
    assert replay.recent_bounds()[0] == 5


# --- sync_from_memory ---------------------------------------------------------------------


def test_sync_from_memory__since_inside__the_missed_events():
    assert sync_from_memory(frames(4, 5, 6), 4) == Sync(6, True, 4, [(5, "e5"), (6, "e6")])
    assert sync_from_memory(frames(4, 5, 6), 3) == Sync(6, True, 3, [(4, "e4"), (5, "e5"),
                                                                      (6, "e6")])  # fmt: skip


def test_sync_from_memory__since_at_the_latest__nothing_missed():
    assert sync_from_memory(frames(4, 5, 6), 6) == Sync(6, True, 6, [])


def test_sync_from_memory__no_since__starts_after_the_latest():
    assert sync_from_memory(frames(4, 5, 6), None) == Sync(6, True, 6, [])


@pytest.mark.parametrize("since", [2, 7, 100])
def test_sync_from_memory__since_outside_what_it_holds__the_log_decides(since):
    # older than the first event held, or beyond the latest (maybe the hub is behind)
    assert sync_from_memory(frames(4, 5, 6), since) is None


def test_sync_from_memory__nothing_known__the_log_decides():
    assert sync_from_memory(None, 3) is None
    assert sync_from_memory(Recent(), None) is None


# --- through the consumer -----------------------------------------------------------------


@database_sync_to_async
def seed() -> dict[str, Any]:
    vendor, reader = make_user(), make_user()
    wedding = make_wedding()
    make_booking(supplier=make_supplier(users=(vendor,)), wedding=wedding)
    make_booking(supplier=make_supplier(users=(reader,)), wedding=wedding)
    return {"topic": wedding.topic, "vendor": token_issue(user=vendor),
            "reader": token_issue(user=reader)}  # fmt: skip


class Ws:
    def __init__(self, comm: WebsocketCommunicator) -> None:
        self.comm = comm
        self.events: list[int] = []

    @classmethod
    async def open(cls, token: str) -> Ws:
        comm = WebsocketCommunicator(application, f"/ws/realtime/?token={token}")
        assert (await comm.connect(timeout=10))[0]
        return cls(comm)

    async def request(self, frame: dict) -> dict:
        await self.comm.send_to(text_data=orjson.dumps({**frame, "ref": "r"}).decode())
        while True:
            out = orjson.loads(await self.comm.receive_from(10))
            if out["type"] == "event":
                self.events.append(out["seq"])
            elif out.get("ref") == "r":
                return out

    async def wait_events(self, count: int) -> list[int]:
        while len(self.events) < count:
            out = orjson.loads(await self.comm.receive_from(10))
            if out["type"] == "event":
                self.events.append(out["seq"])
        return self.events


async def post(ws: Ws, topic: str, text: str) -> int:
    reply = await ws.request(
        {"type": "publish", "topic": topic, "event": "message.posted", "payload": {"text": text}}
    )
    return reply["seq"]


async def hub_holds(topic: str, seq: int) -> None:
    for _ in range(100):
        recent = get_hub().recent_of(topic)
        if recent is not None and recent.last >= seq:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the hub never received {topic}#{seq}")


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_reconnect__missed_events_from_the_hub_then_live():
    # given a reader that saw 1 and 2, then dropped; 3 and 4 published meanwhile
    world = await seed()
    topic = world["topic"]
    writer = await Ws.open(world["vendor"])
    reader = await Ws.open(world["reader"])
    await reader.request({"type": "subscribe", "topics": {topic: {}}})
    for text in "ab":
        await post(writer, topic, text)
    assert await reader.wait_events(2) == [1, 2]
    await reader.comm.disconnect()
    for text in "cd":
        await post(writer, topic, text)
    await hub_holds(topic, 4)
    # when it comes back with since=2 (the hub still holds 3 and 4) and 5 follows
    back = await Ws.open(world["reader"])
    reply = await back.request({"type": "subscribe", "topics": {topic: {"since": 2}}})
    await post(writer, topic, "e")
    # then it gets 3, 4 and then 5, once each
    assert reply["topics"][topic] == {"status": "ok", "seq": 4, "recovered": True, "epoch": ANY}
    assert await back.wait_events(3) == [3, 4, 5]
    await back.comm.disconnect()
    await writer.comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_reconnect__hub_missed_an_event__the_log_fills_in(monkeypatch):
    # given events 1..3 stored, of which the hub received only 1 and 3 (the layer lost 2)
    world = await seed()
    topic = world["topic"]
    writer = await Ws.open(world["vendor"])
    await writer.request({"type": "subscribe", "topics": {topic: {}}})  # the hub joins
    hub = get_hub()
    real_dispatch = hub.dispatch

    def lose_seq_2(message: dict) -> None:
        if message.get("type") != "rt.event" or message.get("seq") != 2:
            real_dispatch(message)

    monkeypatch.setattr(hub, "dispatch", lose_seq_2)
    for text in "abc":
        await post(writer, topic, text)
    await hub_holds(topic, 3)
    assert [seq for seq, _, _ in hub.recent_of(topic).frames] == [3]
    # when a reader subscribes with since=1
    reader = await Ws.open(world["reader"])
    reply = await reader.request({"type": "subscribe", "topics": {topic: {"since": 1}}})
    # then it gets 2 and 3 from the log, in order
    assert reply["topics"][topic] == {"status": "ok", "seq": 3, "recovered": True, "epoch": ANY}
    assert await reader.wait_events(2) == [2, 3]
    await reader.comm.disconnect()
    await writer.comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_hub__stays_in_a_topics_group_for_a_while_after_its_last_connection(monkeypatch):
    import realtime.hub

    # Long enough for the steps below on a loaded machine; short to wait out at the end.
    linger = 2.0
    monkeypatch.setattr(realtime.hub, "RECENT_S", linger)
    world = await seed()
    topic = world["topic"]
    writer = await Ws.open(world["vendor"])  # publishes only: not a subscriber
    reader = await Ws.open(world["reader"])
    await reader.request({"type": "subscribe", "topics": {topic: {}}})
    hub = get_hub()
    await reader.comm.disconnect()

    # lingering: still in the group, so an event published now reaches the hub and is
    # kept among the topic's recent events
    assert topic in hub.topics and hub.in_group(topic)
    assert await post(writer, topic, "while nobody listens") == 1
    await hub_holds(topic, 1)
    # (and only there: the log no longer has it, as after pruning)
    await database_sync_to_async(lambda: Event.objects.filter(topic=topic).delete())()

    # a connection that comes back in time finds it there: the hub's memory replays the
    # event the log cannot
    back = await Ws.open(world["reader"])
    reply = await back.request({"type": "subscribe", "topics": {topic: {"since": 0}}})
    assert reply["topics"][topic] == {"status": "ok", "seq": 1, "recovered": True, "epoch": ANY}
    assert await back.wait_events(1) == [1]
    await back.comm.disconnect()
    await writer.comm.disconnect()

    # and once nobody has come back for that long, the hub leaves the group
    deadline = asyncio.get_running_loop().time() + linger + 10
    while topic in hub.topics and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert topic not in hub.topics and hub.recent_of(topic) is None
    assert not hub.in_group(topic)
