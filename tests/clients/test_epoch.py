"""The Python client and the stream epoch (PROTOCOL §4, v1.1), against a real server
process: it resumes with its epoch, so after a restore of the server's database (and the
bump that goes with it) it takes the reset path instead of merging two histories; with
the same epoch it resumes as before.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest
from channels.db import database_sync_to_async
from wedsync_client import RealtimeClient

from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.realtime.test_epoch import bump, restore_to
from tests.servers import Server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(90),
]


@pytest.fixture
def server(redis_url: str):
    running = Server("uvicorn")
    yield running
    running.stop()


@database_sync_to_async
def seed() -> dict[str, Any]:
    planner, vendor = make_user(), make_user()
    wedding = make_wedding()
    make_booking(supplier=make_supplier(category="planner", users=(planner,)), wedding=wedding)
    make_booking(supplier=make_supplier(users=(vendor,)), wedding=wedding)
    return {
        "wedding_id": wedding.pk,
        "topic": wedding.topic,
        "planner": token_issue(user=planner),
        "vendor": token_issue(user=vendor),
    }


def http(server: Server, token: str, path: str, body: dict | None = None) -> dict:
    """One JSON request to the server as the token's user (a POST with ``body``)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        return json.loads(response.read())


class App:
    """An integration's state: the wedding's snapshot, then the events the client hands it."""

    def __init__(self, server: Server, world: dict[str, Any]) -> None:
        self.server, self.world = server, world
        self.snapshot: dict[str, Any] = {}
        self.texts: list[str] = []  # message texts, in the order applied
        self.resets: list[tuple[str, int]] = []

    async def load(self) -> dict[str, Any]:
        path = f"/api/weddings/{self.world['wedding_id']}/"
        self.snapshot = await asyncio.to_thread(http, self.server, self.world["vendor"], path)
        return self.snapshot

    def on_event(self, frame: dict) -> None:
        if frame["event"] == "message.posted":
            self.texts.append(frame["payload"]["text"])

    async def on_reset(self, topic: str, seq: int) -> dict[str, Any]:
        # The history no longer holds what we have: start again from a fresh snapshot.
        self.texts = []
        snapshot = await self.load()
        self.resets.append((topic, seq))  # done: the snapshot is the app's state
        return snapshot

    async def post(self, text: str) -> int:
        path = f"/api/weddings/{self.world['wedding_id']}/events"
        body = {"event": "message.posted", "payload": {"text": text}}
        reply = await asyncio.to_thread(http, self.server, self.world["planner"], path, body)
        return reply["seq"]


async def test_client__after_a_restore_and_bump__resets_instead_of_merging(server):
    # given an app that loaded the snapshot and follows the wedding from its seq and epoch
    world = await seed()
    topic = world["topic"]
    app = App(server, world)
    snapshot = await app.load()
    client = RealtimeClient(
        server.ws_url, token=world["vendor"], on_event=app.on_event, on_reset=app.on_reset
    )
    await client.connect()
    try:
        await client.subscribe(
            topic, since={topic: snapshot["seq"]}, epochs={topic: snapshot["epoch"]}
        )
        assert client.epoch(topic) == snapshot["epoch"]
        for text in ("one", "two", "three"):
            await app.post(text)
        await client.wait_for_seq(topic, 3)
        assert app.texts == ["one", "two", "three"]

        # when the database is restored to seq 1, others publish from there (reusing 2..4),
        # and the operator bumps the epoch
        await database_sync_to_async(restore_to)(topic, 1)
        for text in ("new two", "new three", "new four"):
            await app.post(text)
        new = await asyncio.to_thread(bump)

        # then the server closes the client (1012); it resumes with its old epoch, is told
        # recovered false, and resets from a fresh snapshot of the new history
        async with asyncio.timeout(30):
            while not app.resets:
                await asyncio.sleep(0.05)
        assert app.resets == [(topic, 4)]
        assert client.epoch(topic) == app.snapshot["epoch"] == new
        assert client.last_seq(topic) == app.snapshot["seq"] == 4
        # and it carries on live from there, in the new history
        seq = await app.post("five")
        await client.wait_for_seq(topic, seq)
        assert app.texts == ["five"]
    finally:
        await client.close()


async def test_client__same_epoch__resumes_with_the_missed_events_without_a_reset(server):
    # given a client that saw two events, then went away
    world = await seed()
    topic = world["topic"]
    app = App(server, world)
    client = RealtimeClient(
        server.ws_url, token=world["vendor"], on_event=app.on_event, on_reset=app.on_reset
    )
    await client.connect()
    try:
        await client.subscribe(topic)
        epoch = client.epoch(topic)
        assert epoch
        for text in ("one", "two"):
            await app.post(text)
        await client.wait_for_seq(topic, 2)
        await client.close()

        # when two more are published meanwhile and it comes back (same epoch)
        for text in ("three", "four"):
            await app.post(text)
        await client.connect()
        await client.wait_for_seq(topic, 4)

        # then it got them once and in order, without a reset, still in that epoch
        assert app.texts == ["one", "two", "three", "four"]
        assert app.resets == [] and client.epoch(topic) == epoch
    finally:
        await client.close()
