"""The database breaker of the realtime path (``core.breaker.database_breaker``, used by
``core.db.in_db_thread``): connection failures in a row open it, lower in wedding-day
mode; while it is open calls fail at once as ``unavailable``; the database back, one
call probes and closes it. A real server process whose database connections are cut."""

from __future__ import annotations

import http.client
import os
import time

import orjson
import pytest
from django.db import connection

from core.breaker import database_breaker
from core.db import DatabaseUnavailable
from realtime.tokens import token_issue
from scaling.services import wedding_day_mode_set
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import Server, database_connections

pytestmark = pytest.mark.django_db(transaction=True)


def test_threshold__lower_in_wedding_day_mode(settings):
    settings.DATABASE_BREAKER_FAILURES = 5
    settings.DATABASE_BREAKER_FAILURES_WEDDING_DAY = 2
    breaker = database_breaker()
    assert breaker.failure_threshold == 5

    wedding_day_mode_set(enabled=True, reason="Saturday", user=None)

    assert breaker.failure_threshold == 2


def test_database_unavailable__is_a_database_error_every_caller_handles():
    from django.db import DatabaseError

    assert issubclass(DatabaseUnavailable, DatabaseError)


def _readiness(server: Server) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/readyz")
        return orjson.loads(conn.getresponse().read())
    finally:
        conn.close()


def _publish(server: Server, token: str, wedding_id: int) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "POST",
            f"/api/weddings/{wedding_id}/events",
            body=b'{"event": "message.posted", "payload": {"text": "hi"}}',
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_database_cut_off__the_breaker_opens_then_closes_when_it_is_back():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    # given a server whose breaker opens after 2 failures, and a vendor's token
    app_name = f"wedsync-breaker-{os.getpid()}"
    wedding, user = make_wedding(), make_user()
    make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
    token = token_issue(user=user)
    server = Server(
        "uvicorn", DATABASE_APPLICATION_NAME=app_name,
        DATABASE_BREAKER_FAILURES="2", DATABASE_BREAKER_FAILURES_WEDDING_DAY="2",
        DATABASE_BREAKER_RESET="1",
    )  # fmt: skip
    try:
        assert _readiness(server)["checks"]["process"]["breakers"].get("database") == "closed"
        assert _publish(server, token, wedding.pk)[0] == 201

        # when its database refuses every connection
        database_connections(False, app_name)
        try:
            statuses = {_publish(server, token, wedding.pk)[0] for _ in range(3)}

            # then writes fail clearly, and the breaker is open (readiness says so)
            assert statuses == {503}
            deadline = time.monotonic() + 10
            while _readiness(server)["checks"]["process"]["breakers"]["database"] != "open":
                assert time.monotonic() < deadline, _readiness(server)
                time.sleep(0.1)
            assert _readiness(server)["status"] == "not_ready"
        finally:
            database_connections(True, app_name)

        # and when the database is back, a probe (readiness's, through the realtime
        # database threads) closes it, and writes go through
        deadline = time.monotonic() + 30
        while _readiness(server)["checks"]["process"]["breakers"]["database"] != "closed":
            assert time.monotonic() < deadline, _readiness(server)
            time.sleep(0.3)
        assert _readiness(server)["status"] == "ready"
        assert _publish(server, token, wedding.pk)[0] == 201
    finally:
        server.stop()
