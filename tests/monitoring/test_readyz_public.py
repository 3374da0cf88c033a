"""``GET /readyz`` in public: the status only (200 ready or degraded, 503 not ready: the same
codes as the detailed answer);
the probes, their errors and the breakers only for whoever may read /metrics (an allowed
network, the scrape token, a staff user by session or token)."""

from __future__ import annotations

import pytest
from django.test import Client

from realtime.tokens import token_issue
from tests.factories import make_user
from tests.monitoring.test_health import IN_MEMORY, dead_redis_url

pytestmark = pytest.mark.django_db(transaction=True)

OUTSIDER = "203.0.113.7"  # TEST-NET-3: not in any allowed network


@pytest.fixture(autouse=True)
def probes(settings) -> str:
    """Redis on a port where nothing listens: /readyz is 200 degraded and its error names
    the host and port; only 127.0.0.1 is an allowed network."""
    settings.REDIS_URL = dead_redis_url()
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.METRICS_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    settings.METRICS_TOKEN = "scrape-secret"
    return settings.REDIS_URL


def test_readyz__public_degraded__200_status_only_no_error_text(client: Client) -> None:
    response = client.get("/readyz", REMOTE_ADDR=OUTSIDER)

    assert response.status_code == 200
    assert response.json() == {"status": "degraded"}
    text = response.content.decode()
    assert "127.0.0.1" not in text
    assert "Error" not in text
    assert "breaker" not in text


def test_readyz__public_not_ready__503_status_only(client: Client, monkeypatch) -> None:
    from realtime.node import process as registry

    monkeypatch.setattr(registry, "draining", True)

    response = client.get("/readyz", REMOTE_ADDR=OUTSIDER)

    assert response.status_code == 503
    assert response.json() == {"status": "not_ready"}


def test_readyz__public_ready__200_status_only(client: Client, settings) -> None:
    settings.REDIS_URL = ""

    response = client.get("/readyz", REMOTE_ADDR=OUTSIDER)

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_readyz__non_staff_session__status_only(client: Client) -> None:
    client.force_login(make_user())

    response = client.get("/readyz", REMOTE_ADDR=OUTSIDER)

    assert response.status_code == 200
    assert response.json() == {"status": "degraded"}


def test_readyz__bad_bearer_token__status_only_not_401(client: Client) -> None:
    response = client.get("/readyz", REMOTE_ADDR=OUTSIDER, HTTP_AUTHORIZATION="Bearer not-a-token")

    assert response.status_code == 200  # the load balancer's answer, whatever it sends
    assert response.json() == {"status": "degraded"}


def _assert_details(response, redis_url: str) -> None:
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["ok"] is False
    assert "ConnectionError" in body["checks"]["redis"]["error"]
    assert "breakers" in body["checks"]["process"]


def test_readyz__staff_session__details(client: Client, probes: str) -> None:
    client.force_login(make_user(is_staff=True))

    _assert_details(client.get("/readyz", REMOTE_ADDR=OUTSIDER), probes)


def test_readyz__staff_bearer_token__details(client: Client, probes: str) -> None:
    token = token_issue(user=make_user(is_staff=True))

    response = client.get("/readyz", REMOTE_ADDR=OUTSIDER, HTTP_AUTHORIZATION=f"Bearer {token}")

    _assert_details(response, probes)


def test_readyz__scrape_token__details(client: Client, probes: str) -> None:
    response = client.get(
        "/readyz", REMOTE_ADDR=OUTSIDER, HTTP_AUTHORIZATION="Bearer scrape-secret"
    )

    _assert_details(response, probes)


def test_readyz__allowed_network__details(client: Client, probes: str) -> None:
    _assert_details(client.get("/readyz", REMOTE_ADDR="127.0.0.1"), probes)


def test_healthz__unchanged_for_the_public(client: Client) -> None:
    response = client.get("/healthz", REMOTE_ADDR=OUTSIDER)

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
