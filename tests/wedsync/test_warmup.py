"""The warm-up of a server process (``wedsync.server.warmup``): what it promises is
loaded, opened and started before the process listens, checked in a process of its own
and through a real server. No timings are asserted: the figures are in
docs/benchmarks.md ("First connect after start", ``python -m bench.coldpath``)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection
from websockets.asyncio.client import connect

from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import BASE_DIR, Server, test_database_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DB_THREADS = 3

# Run in a fresh interpreter: imports and pools are per process, and the test process has
# loaded everything long ago.
_PROBE = """
import asyncio, json, sys, threading

import django

django.setup()
lazy = "django.core.serializers.xml_serializer"
before = {"serializers": lazy in sys.modules}

from wedsync.server.warmup import warm_up  # noqa: E402


async def main():
    report = await warm_up()
    from django.conf import settings
    from django.db import connection

    from core.redis import shared_client

    pool = shared_client(settings.REDIS_URL).connection_pool
    print(json.dumps({
        "before": before,
        "report": report,
        "serializers": lazy in sys.modules,
        "db_threads": sorted(
            t.name for t in threading.enumerate() if t.name.startswith("wedsync-db_")
        ),
        "db_pool": connection.pool.get_stats()["pool_size"],
        "redis_connections": len(pool._available_connections) + len(pool._in_use_connections),
    }))


asyncio.run(main())
"""


def _probe_env() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "wedsync.settings",
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "DJANGO_DEBUG": "true",
        "DATABASE_URL": test_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CACHE_NAMESPACE": settings.CACHE_NAMESPACE,
        "REALTIME_DB_THREADS": str(DB_THREADS),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(BASE_DIR),
    }


def test_warm_up__loads_the_lazy_imports_and_opens_every_thread_pool_and_connection(
    django_db_setup: Any,
):
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.skip("the pools checked here are PostgreSQL's and Redis's")
    # when a fresh process warms up
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=BASE_DIR,
        env=_probe_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])

    # then every step ran, and what the first connection would have paid for is done:
    assert not found["before"]["serializers"], "the serializers were not lazy to begin with"
    report = found["report"]
    failed = {step: r for step, r in report.items() if not r["ok"]}
    assert not failed, failed
    assert found["serializers"]  # the cached user row's serializers (and their imports)
    # every database thread started, each having held a pooled connection at once
    assert found["db_threads"] == [f"wedsync-db_{n}" for n in range(DB_THREADS)]
    assert found["db_pool"] >= DB_THREADS
    # several connections of the shared Redis pool opened side by side
    assert found["redis_connections"] >= 2
    assert report["channel_layer"]["result"] != "none"
    assert report["jwks"]["result"] is False  # no JWKS URL configured: nothing fetched


def _db_sessions(application_name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [application_name],
        )
        return cursor.fetchone()[0]


@database_sync_to_async
def _seed() -> tuple[str, str]:
    user = make_user()
    wedding = make_wedding()
    make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
    return wedding.topic, token_issue(user=user)


@pytest.mark.django_db(transaction=True)
async def test_server__is_warm_when_it_first_answers_and_its_first_subscribe_succeeds():
    if connection.vendor != "postgresql":
        pytest.skip("the database sessions are counted in pg_stat_activity")
    # given a server process whose database sessions carry a name of their own
    app_name = f"wedsync-warmup-{uuid.uuid4().hex[:8]}"
    topic, token = await _seed()
    server = Server(
        "uvicorn", REALTIME_DB_THREADS=str(DB_THREADS), DATABASE_APPLICATION_NAME=app_name
    )
    try:
        # when it first answers (``Server`` returns at the first 200 of /healthz): no
        # request has reached the application, so anything warm was warmed at start-up
        sessions = await database_sync_to_async(_db_sessions)(app_name)

        # then its database pool holds a session for each of its database threads (the
        # pool opens them only as threads check connections out), and it is ready
        assert sessions >= DB_THREADS
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["status"]) == (200, "ready")
        conn.close()

        # and the first connection subscribes
        async with connect(f"{server.ws_url}?token={token}", compression=None) as ws:
            frame = {"type": "subscribe", "ref": "1", "topics": {topic: {}}}
            await ws.send(orjson.dumps(frame).decode())
            reply: dict[str, Any] = {}
            while reply.get("ref") != "1":  # frames before the reply (presence) are skipped
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
        assert reply["status"] == "ok", reply
        assert reply["topics"][topic]["status"] == "ok", reply
    finally:
        server.stop()
