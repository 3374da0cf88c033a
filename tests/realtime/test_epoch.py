"""The stream epoch (realtime/epoch.py, PROTOCOL §4 and §9, v1.1): which history a seq
counts in, so that a client never merges the log it holds with a restored one.

Through the real ASGI application and database (subscribe, snapshot, history), the
``stream_epoch`` command in-process and as the operator runs it, and a real server
process that must answer with a bumped epoch within ``EPOCH_BOUND``. A restore is
simulated as point-in-time recovery leaves the log: the events after the target are
gone and the topic's cursor is back at the target's seq, so the next publishes reuse
the seqs clients already hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime import consumers
from realtime.epoch import EPOCH_BOUND, EPOCH_TTL, WATCH_INTERVAL, epoch_load, stream_epoch_bump
from realtime.models import Event, StreamEpoch, TopicCursor
from realtime.services import event_publish
from realtime.tokens import token_issue
from tests.realtime import test_consumer
from tests.realtime.test_consumer import world
from tests.realtime.test_replay import hub_holds
from tests.servers import BASE_DIR, Server, production_env, test_database_url
from weddings.models import Wedding

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

OTHER_EPOCH = "0ther3poch"  # an epoch this database never had
opened = test_consumer.opened  # the consumer tests' connections (a fixture)


# --- helpers (the client and web tests of the epoch use them too) ------------------------


def restore_to(topic: str, seq: int) -> None:
    """The topic's log as a point-in-time restore to its event ``seq`` leaves it."""
    Event.objects.filter(topic=topic, seq__gt=seq).delete()
    TopicCursor.objects.filter(topic=topic).update(last_seq=seq)


def current_epoch() -> str:
    """The epoch in the database (what every process must come to answer), not cached."""
    return epoch_load()


def run_stream_epoch(*args: str, namespace: str | None = None) -> subprocess.CompletedProcess:
    """``python manage.py stream_epoch ARGS`` as the operator runs it: its own process, with
    the deployment's settings (the servers' database, Redis and cache namespace)."""
    env = {
        **os.environ,
        **production_env(),
        "DATABASE_URL": test_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CACHE_NAMESPACE": namespace or settings.CACHE_NAMESPACE,
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return subprocess.run(
        [sys.executable, "manage.py", "stream_epoch", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def bump(reason: str = "restored to 14:05 UTC", *, namespace: str | None = None) -> str:
    """Bump the epoch with the command in its own process; the new epoch it printed."""
    result = run_stream_epoch("--bump", "--reason", reason, namespace=namespace)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


async def no_events(conn: Any, wait: float = 0.5) -> bool:
    """Whether no event frame arrives within ``wait`` seconds (presence diffs may)."""
    frames = list(conn.backlog)
    conn.backlog.clear()
    while not await conn.comm.receive_nothing(wait):
        frames.append(await conn.recv())
    return not [f for f in frames if f["type"] == "event"]


async def closed_with(conn: Any, timeout: float) -> dict[str, Any]:
    """The close the server sends ``conn`` within ``timeout``, skipping the frames before
    it (no event among them)."""
    while True:
        out = await conn.comm.receive_output(timeout)
        if out["type"] == "websocket.close":
            return out
        assert orjson.loads(out["text"])["type"] != "event", out


async def publish(conn: Any, topic: str, text: str) -> int:
    reply = await conn.request(
        {"type": "publish", "topic": topic, "event": "message.posted", "payload": {"text": text}}
    )
    assert reply["status"] == "ok", reply
    return reply["seq"]


# --- subscribe ----------------------------------------------------------------------------


async def test_subscribe__each_topic_names_the_present_epoch(opened):
    # given a planner on wedding A
    w = await world()
    conn, _, _ = await opened(user=w["planner"])
    epoch = await database_sync_to_async(current_epoch)()
    a, b = w["a"].topic, w["b"].topic

    # when it subscribes without since, then again with two topics it may not join
    first = await conn.request({"type": "subscribe", "topics": {a: {}}})
    again = await conn.request({"type": "subscribe", "topics": {a: {}, b: {}, "ops": {}}})

    # then every topic subscribed carries the epoch (also one subscribed already), and a
    # refused one does not
    assert first["topics"][a] == {"status": "ok", "seq": 0, "epoch": epoch}
    assert again["topics"][a] == {"status": "ok", "seq": 0, "epoch": epoch}
    assert again["topics"][b]["status"] == again["topics"]["ops"]["status"] == "error"
    assert "epoch" not in again["topics"][b] and "epoch" not in again["topics"]["ops"]


async def test_subscribe_since__same_epoch_replays_the_missed_events(opened):
    # given three events, and a reader that saw the first in the present epoch
    w = await world()
    topic = w["a"].topic
    writer, _, _ = await opened(user=w["planner"])
    for text in "abc":
        await publish(writer, topic, text)
    epoch = await database_sync_to_async(current_epoch)()

    # when it resumes with since=1 and that epoch
    reader, _, _ = await opened(user=w["photographer"])
    reply = await reader.request(
        {"type": "subscribe", "topics": {topic: {"since": 1, "epoch": epoch}}}
    )

    # then it is recovered and gets 2 and 3
    assert reply["topics"][topic] == {"status": "ok", "seq": 3, "recovered": True, "epoch": epoch}
    assert [e["payload"]["text"] for e in await reader.events(2)] == ["b", "c"]


async def test_subscribe_since__other_epoch_is_not_recovered_nothing_replayed_then_live(opened):
    # given three events that the hub of this process holds in memory too
    w = await world()
    topic = w["a"].topic
    writer, _, _ = await opened(user=w["planner"])
    await writer.request({"type": "subscribe", "topics": {topic: {}}})
    for text in "abc":
        await publish(writer, topic, text)
    await hub_holds(topic, 3)
    epoch = await database_sync_to_async(current_epoch)()

    # when a reader resumes with since=1 counted in another epoch
    reader, _, _ = await opened(user=w["photographer"])
    reply = await reader.request(
        {"type": "subscribe", "topics": {topic: {"since": 1, "epoch": OTHER_EPOCH}}}
    )

    # then it must reload: not recovered, at the present seq and epoch, nothing replayed
    assert reply["topics"][topic] == {"status": "ok", "seq": 3, "recovered": False, "epoch": epoch}
    assert await no_events(reader)
    # and delivery goes on after that seq
    await publish(writer, topic, "d")
    assert (await reader.recv_type("event"))["seq"] == 4


async def test_subscribe_since__without_epoch_replays_as_in_v1(opened):
    # given three events
    w = await world()
    topic = w["a"].topic
    writer, _, _ = await opened(user=w["planner"])
    for text in "abc":
        await publish(writer, topic, text)

    # when a v1 client resumes with since=1 and no epoch
    reader, _, _ = await opened(user=w["photographer"])
    reply = await reader.request({"type": "subscribe", "topics": {topic: {"since": 1}}})

    # then it is replayed as before (the epoch is there for it to ignore)
    status = reply["topics"][topic]
    assert status["recovered"] is True and status["seq"] == 3
    assert [e["seq"] for e in await reader.events(2)] == [2, 3]


@pytest.mark.parametrize("epoch", ["", "x" * 33, "has space", "line\n", 12])
async def test_subscribe__a_bad_epoch_is_invalid_payload_naming_it(opened, epoch):
    w = await world()
    topic = w["a"].topic
    conn, _, _ = await opened(user=w["planner"])

    reply = await conn.request(
        {"type": "subscribe", "topics": {topic: {"since": 0, "epoch": epoch}}}
    )

    assert reply["status"] == "error" and reply["code"] == "invalid_payload"
    assert reply["field"] == f"topics.{topic}.epoch"
    assert (await conn.request({"type": "ping"}))["type"] == "pong"  # still usable


# --- a bump while this process runs ---------------------------------------------------------


async def test_bump__closes_connections_subscribed_under_the_old_epoch_with_1012(opened):
    # given a reader subscribed in the present epoch
    w = await world()
    reader, _, _ = await opened(user=w["photographer"])
    await reader.request({"type": "subscribe", "topics": {w["a"].topic: {}}})

    # when the epoch is bumped
    started = time.monotonic()
    await database_sync_to_async(stream_epoch_bump)(reason="restored to 14:05 UTC")

    # then its connection is closed with 1012, well within the bound (the watcher's tick)
    out = await closed_with(reader, EPOCH_BOUND)
    waited = time.monotonic() - started
    assert out["code"] == 1012, out
    assert "epoch" in out["reason"]
    assert waited < EPOCH_BOUND
    print(f"closed {waited:.2f} s after the bump (watch interval {WATCH_INTERVAL} s)")


async def test_bump__seen_while_a_subscribe_runs__that_subscribe_is_closed_not_answered(
    opened, monkeypatch
):
    # given a connection subscribed (its process watches the epoch), and a second one
    # whose subscribe is held in its access check while the epoch is bumped and the
    # process sees it
    w = await world()
    topic = w["a"].topic
    first, _, _ = await opened(user=w["planner"])
    await first.request({"type": "subscribe", "topics": {topic: {}}})
    epoch = await database_sync_to_async(current_epoch)()
    check = consumers.authorize_and_describe

    def bumped_meanwhile(user: Any, names: list[str]) -> Any:
        stream_epoch_bump(reason="restored while a subscribe ran")
        time.sleep(WATCH_INTERVAL * 2)  # the watcher's tick sees it
        return check(user, names)

    monkeypatch.setattr(consumers, "authorize_and_describe", bumped_meanwhile)
    second, _, _ = await opened(user=w["photographer"])

    # when it subscribes with a position in the epoch it read first
    await second.send(
        {"type": "subscribe", "ref": "s", "topics": {topic: {"since": 0, "epoch": epoch}}}
    )

    # then it gets no answer in the old epoch: it is closed with 1012, to resume and reload
    assert (await closed_with(second, EPOCH_BOUND))["code"] == 1012
    assert (await closed_with(first, EPOCH_BOUND))["code"] == 1012


async def test_bump__a_subscribe_is_never_answered_from_the_old_history_the_hub_holds(opened):
    # given events 1..4 that the hub of this process holds in memory (a subscriber)
    w = await world()
    topic = w["a"].topic
    writer, _, _ = await opened(user=w["planner"])
    await writer.request({"type": "subscribe", "topics": {topic: {}}})
    for text in ("one", "two", "old three", "old four"):
        await publish(writer, topic, text)
    await hub_holds(topic, 4)

    # when the log is restored to seq 2, the epoch bumped, a client loads its position
    # (seq 2 in the new epoch), and 3 and 4 are published again, with other contents
    await database_sync_to_async(restore_to)(topic, 2)
    await database_sync_to_async(stream_epoch_bump)(reason="restored to seq 2")
    epoch = await database_sync_to_async(current_epoch)()
    other, _, _ = await opened(user=w["planner"])
    for text in ("new three", "new four"):
        await publish(other, topic, text)

    # and that client resumes from seq 2 in the new epoch
    reader, _, _ = await opened(user=w["photographer"])
    reply = await reader.request(
        {"type": "subscribe", "topics": {topic: {"since": 2, "epoch": epoch}}}
    )

    # then it gets the new 3 and 4, read from the log, not what the hub remembered
    assert reply["topics"][topic] == {"status": "ok", "seq": 4, "recovered": True, "epoch": epoch}
    events = await reader.events(2)
    assert [(e["seq"], e["payload"]["text"]) for e in events] == [
        (3, "new three"),
        (4, "new four"),
    ]


# --- snapshot and history ---------------------------------------------------------------------


def bearer(user: Any) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token_issue(user=user)}"}


def get_json(path: str, user: Any, status: int = 200) -> dict[str, Any]:
    response = Client().get(path, **bearer(user))
    assert response.status_code == status, response.content
    return orjson.loads(response.content)


def history_world() -> dict[str, Any]:
    from tests.factories import make_booking, make_supplier, make_user, make_wedding

    planner = make_user()
    wedding = make_wedding()
    make_booking(supplier=make_supplier(category="planner", users=(planner,)), wedding=wedding)
    for text in "abc":
        event_publish(
            topic=wedding.topic, event="message.posted", payload={"text": text}, user=planner
        )
    return {"planner": planner, "wedding": wedding, "path": f"/api/weddings/{wedding.pk}/"}


def test_snapshot__carries_the_epoch_its_seq_counts_in():
    w = history_world()

    snapshot = get_json(w["path"], w["planner"])

    assert snapshot["seq"] == 3 and snapshot["epoch"] == current_epoch()


def test_snapshot__one_cached_before_a_bump_is_read_again_not_served():
    # given a snapshot served (and cached), then a change that sends no invalidation
    w = history_world()
    before = get_json(w["path"], w["planner"])
    Wedding.objects.filter(pk=w["wedding"].pk).update(guest_count=321)
    assert (
        get_json(w["path"], w["planner"])["wedding"]["guest_count"]
        == before["wedding"]["guest_count"]
    )  # still the cached one

    # when the epoch is bumped
    new = stream_epoch_bump(reason="restored").epoch

    # then the snapshot is read again from the database, in the new epoch
    after = get_json(w["path"], w["planner"])
    assert after["epoch"] == new != before["epoch"]
    assert after["wedding"]["guest_count"] == 321


def test_history__same_epoch_pages_as_before():
    w = history_world()
    epoch = current_epoch()

    page = get_json(f"{w['path']}events?since=1&epoch={epoch}", w["planner"])

    assert page["recovered"] is True and page["epoch"] == epoch
    assert [e["seq"] for e in page["events"]] == [2, 3]


def test_history__other_epoch_is_not_recovered_and_has_no_events():
    w = history_world()

    page = get_json(f"{w['path']}events?since=1&epoch={OTHER_EPOCH}", w["planner"])

    assert page == {
        "topic": w["wedding"].topic, "seq": 3, "epoch": current_epoch(), "recovered": False,
        "events": [], "next_since": None,
    }  # fmt: skip


def test_history__without_epoch_as_in_v1():
    w = history_world()

    page = get_json(f"{w['path']}events?since=1", w["planner"])

    assert page["recovered"] is True and [e["seq"] for e in page["events"]] == [2, 3]
    assert page["epoch"] == current_epoch()


@pytest.mark.parametrize("epoch", ["", "x" * 33, "a%20b", "ab%0A", "%C3%A9"])
def test_history__a_bad_epoch_is_400(epoch):
    w = history_world()

    body = get_json(f"{w['path']}events?since=1&epoch={epoch}", w["planner"], status=400)

    assert body["error"]["code"] == "bad_request" and "epoch" in body["error"]["message"]


# --- the command -----------------------------------------------------------------------------


def test_command__prints_the_epoch_as_its_last_line(capsys):
    call_command("stream_epoch")

    assert capsys.readouterr().out.strip().splitlines()[-1] == current_epoch()


def test_command__bump_sets_a_fresh_epoch_and_records_when_and_why(capsys):
    # given the epoch the database was seeded with
    before = epoch_load()

    # when the operator bumps it after a restore
    call_command("stream_epoch", "--bump", "--reason", "restored to 2026-06-13 14:05 UTC")

    # then a new one is printed and stored, with the old one, the time and the reason
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    row = StreamEpoch.objects.get(pk=StreamEpoch.ROW)
    assert printed == row.epoch != before
    assert row.previous == before and row.reason == "restored to 2026-06-13 14:05 UTC"
    assert row.changed_at is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bump"], "--reason"),
        (["--bump", "--reason", "   "], "--reason"),
        (["--reason", "why"], "--bump"),
        (["--bump", "--reason", "x" * 201], "200"),
    ],
)
def test_command__bad_arguments_are_a_clear_error_and_change_nothing(args, message):
    before = epoch_load()

    with pytest.raises(CommandError, match=message):
        call_command("stream_epoch", *args)

    assert current_epoch() == before


def test_command__as_the_operator_runs_it__one_line_error_no_traceback():
    result = run_stream_epoch("--bump")

    assert result.returncode == 1
    assert "--reason" in result.stderr and "Traceback" not in result.stderr


def test_migration__seeds_a_fresh_epoch_in_every_new_database():
    # given the migrations up to the one before the stream epoch
    executor = MigrationExecutor(connection)
    seeded = []
    try:
        for _ in range(2):
            executor.migrate([("realtime", "0005_connectticket")])
            executor.loader.build_graph()
            # when the epoch's migration runs (as on a new database)
            executor.migrate([("realtime", "0006_stream_epoch")])
            executor.loader.build_graph()
            seeded.append(StreamEpoch.objects.get(pk=StreamEpoch.ROW).epoch)
    finally:
        executor.migrate(executor.loader.graph.leaf_nodes())
    # then each run seeded the row with an epoch of its own
    assert len(set(seeded)) == 2
    assert all(len(epoch) == 12 and int(epoch, 16) >= 0 for epoch in seeded)


# --- a real server process ------------------------------------------------------------------


@database_sync_to_async
def server_world() -> dict[str, Any]:
    from tests.factories import make_booking, make_supplier, make_user, make_wedding

    users = [make_user() for _ in range(3)]
    wedding = make_wedding()
    for user in users:
        make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
    return {"topic": wedding.topic, "tokens": [token_issue(user=u) for u in users]}


async def subscribe(ws: Any, topics: dict[str, dict], ref: str = "s") -> dict:
    await ws.send(orjson.dumps({"type": "subscribe", "ref": ref, "topics": topics}).decode())
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame.get("ref") == ref:
            return frame


async def answered_epoch(server: Server, token: str, topic: str) -> str:
    """The epoch a fresh connection's subscribe is answered with."""
    async with connect(f"{server.ws_url}?token={token}") as ws:
        reply = await subscribe(ws, {topic: {}})
        return reply["topics"][topic]["epoch"]


async def read_until_closed(ws: Any) -> None:
    """Read (and drop) what ``ws`` receives until it is closed: a client that stops reading
    would not see its close either."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def until_answered(server: Server, token: str, topic: str, epoch: str) -> float:
    """Seconds until a subscribe on ``server`` is answered with ``epoch`` (failing past
    the bound, with a second of slack for a loaded machine)."""
    started = time.monotonic()
    while True:
        if await answered_epoch(server, token, topic) == epoch:
            return time.monotonic() - started
        assert time.monotonic() - started < EPOCH_BOUND + 1, "the old epoch outlived the bound"
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "embedded-cache"])
async def test_bump__a_running_server_answers_the_new_epoch_within_the_bound(with_redis):
    # given a server process (sharing Redis, or with no Redis: then only the TTL tells it)
    server = Server("uvicorn", **({} if with_redis else {"REDIS_URL": ""}))
    try:
        world = await server_world()
        topic, token = world["topic"], world["tokens"][0]
        old = await answered_epoch(server, token, topic)
        # and a client subscribed with a position in that epoch, reading what comes
        live = await connect(f"{server.ws_url}?token={world['tokens'][1]}")
        await subscribe(live, {topic: {"since": 0, "epoch": old}})
        reading = asyncio.ensure_future(read_until_closed(live))

        # when the operator bumps the epoch after a restore (timed from the command's start)
        started = time.monotonic()
        new = await asyncio.to_thread(bump)

        # then the server answers with the new one within the bound
        assert new != old
        await until_answered(server, token, topic, new)
        waited = time.monotonic() - started
        # and the client subscribed before is closed with 1012 (to reload on resuming)
        async with asyncio.timeout(max(0.5, EPOCH_BOUND + 1 - (time.monotonic() - started))):
            await reading
        assert live.close_code == 1012, live.close_code
        # and resuming with its old epoch is not recovered
        async with connect(f"{server.ws_url}?token={world['tokens'][2]}") as ws:
            status = (await subscribe(ws, {topic: {"since": 0, "epoch": old}}))["topics"][topic]
        assert status["recovered"] is False and status["epoch"] == new
        print(
            f"{'Redis' if with_redis else 'no Redis'}: new epoch answered {waited:.2f} s after"
            " the command started"
        )
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
async def test_database_unreachable__a_server_keeps_answering_the_last_epoch_it_read():
    # given a server that served a wedding's snapshot (now cached) in the present epoch
    app_name = f"wedsync-epoch-outage-{os.getpid()}"
    server = Server("uvicorn", DATABASE_APPLICATION_NAME=app_name)
    admin_dsn = test_database_url().rsplit("/", 1)[0] + "/postgres"
    db_name = connection.settings_dict["NAME"]

    def database(allow: bool) -> None:
        import psycopg

        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS {allow}')
            if not allow:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    [app_name],
                )

    def snapshot(token: str, wedding_id: int) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request(
                "GET", f"/api/weddings/{wedding_id}/", headers={"Authorization": f"Bearer {token}"}
            )
            response = conn.getresponse()
            return response.status, orjson.loads(response.read())
        finally:
            conn.close()

    try:
        world = await server_world()
        token, wedding_id = world["tokens"][0], int(world["topic"].split(":")[1])
        status, before = await asyncio.to_thread(snapshot, token, wedding_id)
        assert status == 200

        # when the database refuses the server for longer than any cached epoch lives
        await asyncio.to_thread(database, False)
        try:
            await asyncio.sleep(2 * EPOCH_TTL + 1)
            status, during = await asyncio.to_thread(snapshot, token, wedding_id)
        finally:
            await asyncio.to_thread(database, True)

        # then the cached snapshot is still served, in the epoch the server read last
        assert status == 200, during
        assert during["epoch"] == before["epoch"] and during["seq"] == before["seq"]
    finally:
        server.stop()
