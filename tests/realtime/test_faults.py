"""Fault tests: real server processes, a Redis of the test's own, the real database.

Each test breaks something a Saturday can break (Redis, a server process, the database
connections, a restart) while publishers run, and then checks the one thing that
matters: every acknowledged event reached every subscriber exactly once, in order.
Bounded in time; no assertion on how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import os
import signal
import time
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.db import connection
from websockets.asyncio.client import connect
from wedsync_client.client import ClientError, RealtimeClient

from realtime.models import Event
from realtime.protocol import CLOSE_CONNECTION_LIMIT, CLOSE_RESTARTING
from realtime.tokens import token_issue
from scaling.services import wedding_day_mode_set
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import RedisServer, Server, database_connections, test_database_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(180),
]

# Clients of the crashed process that reconnect at once (the 1,000-client storm is the
# load benchmark's reconnect-storm scenario; this keeps the suite's share small).
STORM = 60
# Publishers may go well past the per-connection and per-user rate limits in these tests.
FAST = {
    "REALTIME_PUBLISH_RATE": "1000", "REALTIME_PUBLISH_BURST": "1000",
    "REALTIME_USER_PUBLISH_RATE": "1000", "REALTIME_USER_PUBLISH_BURST": "1000",
    "REALTIME_FRAME_RATE": "10000", "REALTIME_FRAME_BURST": "10000",
    "REALTIME_USER_FRAME_RATE": "10000", "REALTIME_USER_FRAME_BURST": "10000",
    "REALTIME_USER_PUBLISH_BYTES_RATE": "100000000",
    "REALTIME_USER_PUBLISH_BYTES_BURST": "100000000",
}  # fmt: skip


@database_sync_to_async
def seed(users: int) -> dict[str, Any]:
    wedding = make_wedding()
    people = [make_user() for _ in range(users)]
    for person in people:
        make_booking(supplier=make_supplier(users=(person,)), wedding=wedding)
    return {"topic": wedding.topic, "tokens": [token_issue(user=p) for p in people]}


def readiness(server: Server) -> tuple[int, str]:
    """/readyz's status code and its ``status`` ("ready", "degraded", "not_ready")."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())["status"]
    except OSError:
        return 0, ""
    finally:
        conn.close()


async def wait_readiness(server: Server, status: str, timeout: float = 30) -> int:
    """Wait until /readyz says ``status``; returns its HTTP status code."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, said = await asyncio.to_thread(readiness, server)
        if said == status:
            return code
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz on :{server.port} never said {status}")


def http_status(server: Server, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


async def wait_status(server: Server, path: str, status: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(http_status, server, path) == status:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} on :{server.port} never answered {status}")


class Subscriber:
    """A client library connection recording every seq it delivers."""

    def __init__(self, urls: str | list[str], token: str) -> None:
        self.seqs: list[int] = []
        self.client = RealtimeClient(
            urls, token=token, on_event=self._on_event, backoff_initial=0.2, backoff_max=2
        )

    def _on_event(self, event: dict) -> None:
        self.seqs.append(event["seq"])

    async def start(self, topic: str) -> Subscriber:
        await self.client.connect()
        await self.client.subscribe(topic)
        return self


class Publishers:
    """Publishers sending message.posted with idempotency keys until told to stop; each
    records the seqs acknowledged to it. A failed publish is retried with the same key
    (the client library does this) until it is acknowledged."""

    def __init__(self, topic: str, clients: list[RealtimeClient]) -> None:
        self.topic, self.clients = topic, clients
        self.acked: list[int] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _run(self, index: int, client: RealtimeClient) -> None:
        await client.connect()
        for n in itertools.count():
            if self._stop.is_set():
                break
            key = f"p{index}-{n}"
            while True:
                try:
                    seq = await client.publish(
                        self.topic, "message.posted", {"text": key}, idempotency_key=key,
                        retries=50,
                    )  # fmt: skip
                    break
                except ClientError as exc:  # ask again, same key: stored at most once
                    self.failures.append(exc.code)
                    await asyncio.sleep(0.2)
            self.acked.append(seq)
            await asyncio.sleep(0.05)
        await client.close()

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._run(i, c)) for i, c in enumerate(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 60)


async def assert_everyone_got_everything(
    topic: str, publishers: Publishers, subscribers: list[Subscriber]
) -> int:
    stored = await database_sync_to_async(Event.objects.filter(topic=topic).count)()
    assert sorted(publishers.acked) == list(range(1, stored + 1))  # none lost, none twice
    for sub in subscribers:
        await sub.client.wait_for_seq(topic, stored, timeout=60)
        assert sub.seqs == list(range(1, stored + 1))
    return stored


async def test_redis_killed_and_restarted__every_acked_event_once_in_order():
    # given two server processes on a Redis of our own, subscribers on both, and four
    # publishers, two per process
    redis = RedisServer()
    servers = [Server("uvicorn", REDIS_URL=redis.url, **FAST) for _ in range(2)]
    try:
        world = await seed(users=8)
        topic, tokens = world["topic"], world["tokens"]
        subscribers = [
            await Subscriber(servers[i % 2].ws_url, tokens[4 + i]).start(topic) for i in range(4)
        ]
        publishers = Publishers(
            topic,
            [
                RealtimeClient(servers[i % 2].ws_url, token=tokens[i], backoff_max=2)
                for i in range(4)
            ],
        )
        publishers.start()
        await asyncio.sleep(1.5)

        # when Redis dies for a few seconds, and comes back empty
        redis.kill()
        for server in servers:
            # degraded, and still ready: a load balancer keeps every host in its pool
            assert await wait_readiness(server, "degraded") == 200
            assert await asyncio.to_thread(http_status, server, "/healthz") == 200
        acked_during_outage = len(publishers.acked)
        await asyncio.sleep(3)
        acked_during_outage = len(publishers.acked) - acked_during_outage
        redis.start()
        for server in servers:
            assert await wait_readiness(server, "ready") == 200
        await asyncio.sleep(1.5)
        await publishers.stop()

        # then publishing went on (stored in the database, acknowledged) and every
        # subscriber has every event exactly once, in order, without reconnecting
        assert acked_during_outage > 0
        stored = await assert_everyone_got_everything(topic, publishers, subscribers)
        assert stored > acked_during_outage
        for sub in subscribers:
            await sub.client.close()
    finally:
        for server in servers:
            server.stop()
        redis.stop()


async def test_one_of_two_servers_sigkilled__its_clients_move_over_and_miss_nothing(redis_url):
    # given subscribers on server A that know server B too, and publishers on B
    servers = [Server("uvicorn", **FAST) for _ in range(2)]
    a, b = servers
    try:
        world = await seed(users=2 + STORM)
        topic, tokens = world["topic"], world["tokens"]
        subscribers = [
            await Subscriber([a.ws_url, b.ws_url], tokens[2 + i]).start(topic) for i in range(STORM)
        ]
        publishers = Publishers(
            topic, [RealtimeClient(b.ws_url, token=tokens[i]) for i in range(2)]
        )
        publishers.start()
        await asyncio.sleep(1)

        # when A crashes mid-stream: all its clients reconnect to B at once
        a.kill()
        await asyncio.sleep(2)
        await publishers.stop()

        # then its clients reconnected to B with since and have every seq exactly once
        stored = await assert_everyone_got_everything(topic, publishers, subscribers)
        assert stored > 0
        assert all(sub.client.url == b.ws_url for sub in subscribers)
        for sub in subscribers:
            await sub.client.close()
    finally:
        for server in servers:
            server.stop()


@pytest.mark.postgres
@pytest.mark.slow(seconds=30)
async def test_database_connections_killed__publishes_fail_clearly_or_succeed_none_lost(
    redis_url,
):
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend needs PostgreSQL")
    # given a server whose database sessions carry a name of their own
    app_name = f"wedsync-fault-{os.getpid()}"
    server = Server("uvicorn", DATABASE_APPLICATION_NAME=app_name, **FAST)
    try:
        world = await seed(users=4)
        topic, tokens = world["topic"], world["tokens"]
        subscribers = [await Subscriber(server.ws_url, tokens[3]).start(topic)]
        publishers = Publishers(
            topic, [RealtimeClient(server.ws_url, token=tokens[i]) for i in range(3)]
        )
        publishers.start()
        await asyncio.sleep(1)

        # when every database session of the server is killed, several times
        @database_sync_to_async
        def terminate() -> int:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    [app_name],
                )
                return cursor.fetchone()[0]

        killed = 0
        for _ in range(5):
            killed += await terminate()
            await asyncio.sleep(0.3)
        await asyncio.sleep(1)
        await publishers.stop()

        # then nothing was lost nor stored twice, and the server carried on by itself
        assert killed > 0
        await assert_everyone_got_everything(topic, publishers, subscribers)
        assert set(publishers.failures) <= {"unavailable", "connection_lost", "timeout"}
        await subscribers[0].client.close()
    finally:
        server.stop()


async def test_connection_limit__across_two_processes__raised_in_wedding_day_mode(redis_url):
    # given a supplier limit of 3 (x2 in wedding-day mode) on two processes
    limits = {
        "REALTIME_MAX_CONNECTIONS_PER_SUPPLIER": "3",
        "REALTIME_WEDDING_DAY_MULTIPLIER": "2",
    }
    servers = [Server("uvicorn", **limits) for _ in range(2)]

    @database_sync_to_async
    def crew() -> list[str]:
        wedding = make_wedding()
        people = [make_user() for _ in range(4)]
        make_booking(supplier=make_supplier(users=people), wedding=wedding)
        return [token_issue(user=p) for p in people]

    async def open_conn(server: Server, token: str) -> Any:
        ws = await connect(f"{server.ws_url}?token={token}")
        await ws.send('{"type":"ping","ref":"1"}')
        await asyncio.wait_for(ws.recv(), 10)  # accepted and counted
        return ws

    async def attempt(server: Server, token: str) -> tuple[Any, int | None]:
        """Connect and ping: (the open connection, None) when accepted and counted, or
        (None, the close code) when refused."""
        ws = await connect(f"{server.ws_url}?token={token}")
        with contextlib.suppress(Exception):  # the close of a refused connection
            await ws.send('{"type":"ping","ref":"1"}')
            await asyncio.wait_for(ws.recv(), 10)
            return ws, None
        return None, ws.close_code

    async def accepted_soon(server: Server, token: str, timeout: float = 15) -> Any:
        """The first connection accepted within ``timeout`` (the processes see a change
        made elsewhere through Redis: the mode's pub/sub, the registry's counts)."""
        deadline = time.monotonic() + timeout
        while True:
            ws, code = await attempt(server, token)
            if ws is not None:
                return ws
            assert code == CLOSE_CONNECTION_LIMIT, code
            assert time.monotonic() < deadline, f"still refused after {timeout} s"
            await asyncio.sleep(0.05)

    async def refused_soon(server: Server, token: str, timeout: float = 15) -> int | None:
        """The close code of the first connection refused within ``timeout``; one accepted
        meanwhile is closed again and the attempt repeated."""
        deadline = time.monotonic() + timeout
        while True:
            ws, code = await attempt(server, token)
            if ws is None:
                return code
            await ws.close()
            assert time.monotonic() < deadline, f"still accepted after {timeout} s"
            await asyncio.sleep(0.05)

    try:
        tokens = await crew()
        # when three members connect, over both processes
        open_ = [
            await open_conn(servers[0], tokens[0]),
            await open_conn(servers[1], tokens[1]),
            await open_conn(servers[1], tokens[2]),
        ]
        # then a fourth is refused with 4029 on either process
        assert (await attempt(servers[0], tokens[3]))[1] == CLOSE_CONNECTION_LIMIT
        # when wedding-day mode is switched on, the same connection is accepted (once the
        # process has dropped its cached mode, told over Redis pub/sub)
        await database_sync_to_async(wedding_day_mode_set)(
            enabled=True, reason="fault test", user=None
        )
        open_.append(await accepted_soon(servers[0], tokens[3]))
        # and once the mode is off again a fifth is refused on the other process
        await database_sync_to_async(wedding_day_mode_set)(
            enabled=False, reason="fault test over", user=None
        )
        assert await refused_soon(servers[1], tokens[3]) == CLOSE_CONNECTION_LIMIT
        # and closing two frees a slot below the limit of 3
        await open_.pop().close()
        await open_.pop().close()
        open_.append(await accepted_soon(servers[1], tokens[3]))
        for ws in open_:
            await ws.close()
    finally:
        for server in servers:
            server.stop()


async def test_sigterm__clients_closed_1012_then_recover_elsewhere_missing_nothing(redis_url):
    # given subscribers on A (knowing B), and publishers on both
    servers = [Server("uvicorn", **FAST) for _ in range(2)]
    a, b = servers
    try:
        world = await seed(users=8)
        topic, tokens = world["topic"], world["tokens"]
        codes: list[int | None] = []
        subscribers = [
            await Subscriber([a.ws_url, b.ws_url], tokens[2 + i]).start(topic) for i in range(5)
        ]
        watcher = await connect(f"{a.ws_url}?token={tokens[7]}")
        publishers = Publishers(
            topic,
            [RealtimeClient([a.ws_url, b.ws_url], token=tokens[i]) for i in range(2)],
        )
        publishers.start()
        await asyncio.sleep(1)

        # when A is told to stop (as an orchestrator does before replacing it)
        os.killpg(a.proc.pid, signal.SIGTERM)
        try:
            while True:
                await asyncio.wait_for(watcher.recv(), 15)
        except Exception:
            codes.append(watcher.close_code)
        await asyncio.to_thread(a.proc.wait, 20)
        await asyncio.sleep(1)
        await publishers.stop()

        # then its connections were closed with 1012 by the drain (not cut by the exit),
        # and every client recovered on B with every event exactly once
        assert codes == [CLOSE_RESTARTING]
        assert a.proc.returncode in (0, -signal.SIGTERM), a.output()  # uvicorn re-raises
        assert "closing 8 connections with 1012" in a.output()
        await assert_everyone_got_everything(topic, publishers, subscribers)
        for sub in subscribers:
            await sub.client.close()
    finally:
        for server in servers:
            server.stop()


@pytest.mark.postgres
async def test_database_unreachable__writes_503_unavailable_cached_reads_go_on(redis_url):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    import psycopg

    app_name = f"wedsync-outage-{os.getpid()}"
    server = Server("uvicorn", DATABASE_APPLICATION_NAME=app_name)
    db_name = connection.settings_dict["NAME"]
    admin_dsn = test_database_url().rsplit("/", 1)[0] + "/postgres"

    def database(allow: bool) -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{db_name}" WITH ALLOW_CONNECTIONS {allow}')
            if not allow:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    [app_name],
                )

    def request(method: str, path: str, token: str, body: bytes | None = None) -> tuple:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, response.read()
        finally:
            conn.close()

    try:
        world = await seed(users=1)
        token, wedding_id = world["tokens"][0], int(world["topic"].split(":")[1])
        snapshot_path = f"/api/weddings/{wedding_id}/"
        events_path = f"/api/weddings/{wedding_id}/events"
        post = b'{"event": "message.posted", "payload": {"text": "hello"}}'
        # given a warm cache (the snapshot was read once)
        assert (await asyncio.to_thread(request, "GET", snapshot_path, token))[0] == 200
        ws = await connect(f"{server.ws_url}?token={token}")
        await ws.send('{"type":"ping","ref":"0"}')
        await asyncio.wait_for(ws.recv(), 10)  # connected: its user's access is cached

        # when the database refuses every connection of the server
        await asyncio.to_thread(database, False)
        try:
            status, _, body = await asyncio.to_thread(request, "POST", events_path, token, post)
            assert status == 503, body
            assert b'"unavailable"' in body
            frame = {"type": "publish", "ref": "p1", "topic": world["topic"],
                     "event": "message.posted", "payload": {"text": "hi"}}  # fmt: skip
            await ws.send(orjson.dumps(frame).decode())
            reply = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
            assert reply["status"] == "error" and reply["code"] == "unavailable", reply
            assert "database is unreachable" in reply["message"]
            # then the snapshot is still served, from the cache, marked read-only (the
            # mark follows the server's database probe, at most a second old)
            deadline = time.monotonic() + 10
            while True:
                status, headers, body = await asyncio.to_thread(
                    request, "GET", snapshot_path, token
                )
                assert status == 200, body
                if "x-wedsync-read-only" in headers or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert "database unreachable" in headers["x-wedsync-read-only"]
            # this process cannot serve writes: not ready (503) outside read-only mode
            assert await asyncio.to_thread(readiness, server) == (503, "not_ready")
        finally:
            await asyncio.to_thread(database, True)

        # and when it is back, service resumes by itself; nothing was half-stored
        deadline = time.monotonic() + 30
        while True:
            status, _, body = await asyncio.to_thread(request, "POST", events_path, token, post)
            if status == 201 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert status == 201, body
        assert orjson.loads(body)["seq"] == 1
        await ws.close()
    finally:
        server.stop()


@pytest.mark.postgres
async def test_database_unreachable_in_read_only_mode__ready_as_degraded_not_failed(redis_url):
    # Read-only mode is the operator's way of serving through a database outage (reads
    # from the cache, writes refused by design): a process in it stays in the pool.
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    from realtime.services import read_only_mode_set

    app_name = f"wedsync-read-only-{os.getpid()}"
    switch = database_sync_to_async(read_only_mode_set)
    server = Server("uvicorn", DATABASE_APPLICATION_NAME=app_name)
    try:
        # given read-only mode engaged, and seen by the server (its switch is cached)
        await switch(enabled=True, reason="database maintenance", user=None)
        assert await asyncio.to_thread(readiness, server) == (200, "ready")

        # when the database refuses every connection of the server
        await asyncio.to_thread(database_connections, False, app_name)
        try:
            # then the process is degraded, still ready
            assert await wait_readiness(server, "degraded") == 200
        finally:
            await asyncio.to_thread(database_connections, True, app_name)
        assert await wait_readiness(server, "ready") == 200
    finally:
        await switch(enabled=False, reason="maintenance over", user=None)
        server.stop()
