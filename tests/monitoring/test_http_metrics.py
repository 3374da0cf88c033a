"""HTTP request metrics (monitoring/middleware.py): counted by method, route name and
status, timed by method and route name; the route is the URL pattern's name, never the
path, so ids and made-up paths add no series. In this process (both handler modes) and
scraped from a real server process's /metrics."""

from __future__ import annotations

import http.client
import uuid

import pytest
from django.test import AsyncClient, Client
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import local_value
from tests.servers import Server

REQUESTS = "wedsync_http_requests_total"
DURATION_COUNT = "wedsync_http_request_duration_seconds_count"


def counted(method: str, route: str, status: str) -> float:
    return local_value(REQUESTS, {"method": method, "route": route, "status": status})


def timed(method: str, route: str) -> float:
    return local_value(DURATION_COUNT, {"method": method, "route": route})


def odd_methods() -> float:
    return sum(counted("other", "healthz", status) for status in ("200", "405"))


@pytest.mark.django_db
def test_requests__counted_by_route_name_and_status_never_by_path():
    client = Client()
    before = {
        "healthz": counted("GET", "healthz", "200"),
        "snapshot": counted("GET", "wedding-snapshot", "401"),
        "unmatched": counted("GET", "unmatched", "404"),
        "other": odd_methods(),
        "timed": timed("GET", "healthz"),
    }

    # when a probe, an API read without credentials, an unknown path and an odd method come
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/weddings/918273/").status_code == 401
    assert client.get(f"/nope/{uuid.uuid4().hex}").status_code == 404
    client.generic("BREW", "/healthz")

    # then each is counted under its route's name, and timed
    assert counted("GET", "healthz", "200") == before["healthz"] + 1
    assert counted("GET", "wedding-snapshot", "401") == before["snapshot"] + 1
    assert counted("GET", "unmatched", "404") == before["unmatched"] + 1
    assert timed("GET", "healthz") == before["timed"] + 1
    assert odd_methods() == before["other"] + 1  # "other", not a label per method


@pytest.mark.django_db(transaction=True)
async def test_requests__counted_on_the_async_path_too():
    before = counted("GET", "readyz", "200") + counted("GET", "readyz", "503")

    await AsyncClient().get("/readyz")

    assert counted("GET", "readyz", "200") + counted("GET", "readyz", "503") == before + 1


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_server_process__metrics_name_routes_not_paths():
    # given a server process in production shape
    server = Server("uvicorn")
    try:
        # when requests reach it under a route with an id and under paths no route has
        def get(path: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
            try:
                conn.request("GET", path, headers={"Host": "127.0.0.1"})
                response = conn.getresponse()
                response.read()
                return response.status
            finally:
                conn.close()

        made_up = [f"/nope-{uuid.uuid4().hex}" for _ in range(3)]
        statuses = [get("/api/weddings/918273/events"), *(get(path) for path in made_up)]
        assert statuses == [401, 404, 404, 404]

        # then /metrics counts them by route name and status, with their latency
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
        conn.request("GET", "/metrics", headers={"Host": "127.0.0.1"})
        text = conn.getresponse().read().decode()
        conn.close()
    finally:
        server.stop()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("wedsync_http_")
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value(REQUESTS, method="GET", route="wedding-events", status="401") == 1
    assert value(REQUESTS, method="GET", route="unmatched", status="404") == 3
    assert value(REQUESTS, method="GET", route="healthz", status="200") >= 1  # readiness polls
    assert value(DURATION_COUNT, method="GET", route="unmatched") == 3
    # and no path became a label value
    routes = {dict(labels).get("route") for _, labels in samples}
    assert not [route for route in routes if route and ("/" in route or "nope" in route)]
