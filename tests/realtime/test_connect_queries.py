"""Database round trips of the connect path (what a reconnect storm multiplies) and of a
publish (what the publish rate is bounded by).

A reconnect (token auth, registry, subscribe with ``since``, replay, presence) must not
query what the cache already holds. The counts are printed for docs/benchmarks.md
(``pytest -s tests/realtime/test_connect_queries.py``); the assertions hold the warm
path to its budget so a change that adds per-connection queries fails here.
"""

from __future__ import annotations

from unittest.mock import ANY

import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db.backends import utils

from realtime.node import get_node
from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.realtime.test_replay import hub_holds
from wedsync.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


class QueryCounter:
    """Counts statements executed on any connection, in any thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = utils.CursorWrapper.execute

        def execute(cursor: object, sql: str, params: object = None) -> object:
            self.count += 1
            return original(cursor, sql, params)

        monkeypatch.setattr(utils.CursorWrapper, "execute", execute)

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


class ThreadHops:
    """Counts the calls handed to the realtime database threads (``core.db``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from core import db

        self.count = 0
        executor = db._get_executor()
        original = executor.submit

        def submit(*args: object, **kwargs: object) -> object:
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(executor, "submit", submit)

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


async def publish_one(token: str, topic: str) -> None:
    comm = WebsocketCommunicator(application, f"/ws/realtime/?token={token}")
    await comm.connect(timeout=10)
    frame = {"type": "publish", "ref": "p", "topic": topic, "event": "message.posted",
             "payload": {"text": "missed"}}  # fmt: skip
    await comm.send_to(text_data=orjson.dumps(frame).decode())
    while orjson.loads(await comm.receive_from(10)).get("ref") != "p":
        pass
    await comm.disconnect()


async def reconnect(token: str, topic: str, since: int) -> dict:
    comm = WebsocketCommunicator(application, f"/ws/realtime/?token={token}")
    connected, _ = await comm.connect(timeout=10)
    assert connected
    frame = {"type": "subscribe", "ref": "s", "topics": {topic: {"since": since}}}
    await comm.send_to(text_data=orjson.dumps(frame).decode())
    while True:
        reply = orjson.loads(await comm.receive_from(10))
        if reply.get("ref") == "s":
            break
    await comm.send_to(text_data='{"type":"ping","ref":"p"}')  # after the replay and presence
    while orjson.loads(await comm.receive_from(10)).get("ref") != "p":
        pass
    await comm.disconnect()
    return reply


async def test_reconnect_with_since__warm_cache__few_queries(monkeypatch) -> None:
    @database_sync_to_async
    def seed() -> tuple[str, str]:
        vendor = make_user()
        wedding = make_wedding()
        make_booking(supplier=make_supplier(users=(vendor,)), wedding=wedding)
        return token_issue(user=vendor), wedding.topic

    token, topic = await seed()
    counter = QueryCounter(monkeypatch)
    hops = ThreadHops(monkeypatch)

    cold = await reconnect(token, topic, 0)
    cold_queries, cold_hops = counter.take(), hops.take()
    await publish_one(token, topic)
    await hub_holds(topic, 1)
    counter.take(), hops.take()
    # a client back soon after a drop: this process's hub still holds what it missed
    warm = await reconnect(token, topic, 0)
    warm_queries, warm_hops = counter.take(), hops.take()
    # a client whose missed events this process did not see (it was on another one)
    get_node().hub.recent[topic].frames.clear()
    from_log = await reconnect(token, topic, 0)
    log_queries, log_hops = counter.take(), hops.take()

    print(
        f"\nreconnect with since: cold {cold_queries} queries in {cold_hops} database-thread "
        f"calls, warm {warm_queries} in {warm_hops} (replay from memory), "
        f"{log_queries} in {log_hops} (replay from the log)"
    )
    for reply in (cold, warm, from_log):
        assert reply["topics"][topic]["status"] == "ok"
    assert warm["topics"][topic] == from_log["topics"][topic] == {
        "status": "ok", "seq": 1, "recovered": True, "epoch": ANY,
    }  # fmt: skip
    assert warm_queries < cold_queries
    # Warm: no query. Auth, access, the supplier list and wedding-day mode come from the
    # cache without a thread; the topic check and the presence card (the wedding's booked
    # suppliers, cached) in one call; the seq and the missed event from the hub.
    assert (warm_queries, warm_hops) == (0, 1)
    # From the log: the topic's seq and the replay page, in a second call (before: five
    # queries in six calls).
    assert log_queries <= 2 and log_hops <= 2


@pytest.mark.django_db
def test_publish_with_key__round_trips() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from realtime import services

    vendor = make_user()
    wedding = make_wedding()
    make_booking(supplier=make_supplier(users=(vendor,)), wedding=wedding)
    services.event_publish(
        topic=wedding.topic, event="message.posted", payload={"text": "warm"}, user=vendor
    )  # the topic's cursor exists; read-only mode is cached

    with CaptureQueriesContext(connection) as queries:
        services.event_publish(
            topic=wedding.topic, event="message.posted", payload={"text": "hi"},
            user=vendor, idempotency_key="k-1",
        )  # fmt: skip

    print(f"\npublish with an idempotency key: {len(queries)} statements")
    for query in queries.captured_queries:
        print("  ", query["sql"][:90])
    # PostgreSQL: authorisation and the acting suppliers in one statement, the event and
    # its key in one more (``_append_one_statement``), inside a savepoint here (the
    # test's transaction). SQLite: the general path, the cursor locked, the key looked
    # up, the cursor updated, two inserts, the savepoint. Before the delivery-path
    # work: 12.
    assert len(queries) <= (4 if connection.vendor == "postgresql" else 8)
