"""The metrics API keeps the dashboard lit through a database outage: it answers the last
figures it read, marked ``stale_since`` (and the header ``X-WedSync-Stale-Since``), and
fresh ones again once the database is back. A real server process, whose database
connections are cut (``ALTER DATABASE … ALLOW_CONNECTIONS false`` and
``pg_terminate_backend``)."""

from __future__ import annotations

import http.client
import os
import time

import orjson
import pytest
from django.db import connection

from realtime.tokens import token_issue
from tests.factories import make_user
from tests.servers import Server, database_connections

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
]

PATH = "/api/performance/realtime/metrics"


def _get(server: Server, token: str) -> tuple[int, dict[str, str], dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", PATH, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, orjson.loads(response.read())
    finally:
        conn.close()


def _until(check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_metrics_api__through_a_database_outage__the_last_figures_marked_stale():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    app_name = f"wedsync-stale-{os.getpid()}"
    token = token_issue(user=make_user(is_staff=True))
    server = Server("uvicorn", DATABASE_APPLICATION_NAME=app_name)
    try:
        # given the figures read once (the staff user's token is cached by then too)
        status, _, fresh = _get(server, token)
        assert status == 200 and "stale_since" not in fresh

        # when the database refuses every connection of the server, and the cached
        # overview (10 s) has run out
        database_connections(False, app_name)
        try:
            time.sleep(11)
            status, headers, body = _get(server, token)

            # then the last figures, marked stale since they were read
            assert status == 200, body
            assert body["stale_since"] == fresh["generated_at"]
            assert headers["x-wedsync-stale-since"] == fresh["generated_at"]
            assert "database is unreachable" in body["stale_reason"]
            assert body["current"] == fresh["current"]
        finally:
            database_connections(True, app_name)

        # and fresh figures once the database is back
        back = _until(lambda: "stale_since" not in _get(server, token)[2])
        assert back
    finally:
        server.stop()
