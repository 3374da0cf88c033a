"""Liveness and readiness endpoints (monitoring/views.py, monitoring/health.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from django.test import Client, override_settings

from monitoring.health import PROBE_TIMEOUT_S

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture(autouse=True)
def from_an_allowed_network(settings) -> None:
    """The test client's 127.0.0.1 may read the details (the /metrics access rule); the
    public answer (status only) is tested in test_readyz_public.py."""
    settings.METRICS_ALLOWED_NETWORKS = ["127.0.0.1/32"]


# transaction=True: the database probe goes through database_sync_to_async, which closes
# "old" connections first (CONN_MAX_AGE=0), and so would close the test's transaction.


def dead_redis_url() -> str:
    """A Redis URL on a local port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def blackhole_redis_url() -> Iterator[str]:
    """A Redis URL on a local port that accepts connections and never answers a byte:
    a hung Redis, which only a timeout gets a probe out of."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_hold() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept_and_hold, name="blackhole-redis", daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_healthz__answers_200_json_without_touching_anything(client: Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
@override_settings(REDIS_URL="", CHANNEL_LAYERS=IN_MEMORY)
def test_readyz__embedded_default_reports_database_and_channel_layer_ok(client: Client) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "channel_layer", "process", "read_only_mode"}
    for name, check in body["checks"].items():
        assert check["ok"] is True, name
        if name not in ("process", "read_only_mode"):
            assert check["ms"] >= 0
    assert body["checks"]["read_only_mode"]["enabled"] is False


@pytest.mark.django_db(transaction=True)
def test_readyz__unreachable_redis_is_200_degraded_with_the_error_and_no_traceback(
    client: Client,
) -> None:
    # given: Redis configured on a port where nothing listens; the in-process layer, so that
    # only the Redis probe can fail
    with override_settings(REDIS_URL=dead_redis_url(), CHANNEL_LAYERS=IN_MEMORY):
        # when
        started = time.monotonic()
        response = client.get("/readyz")
        elapsed = time.monotonic() - started

    # then: still ready (a shared dependency never fails readiness), degraded
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"]  # names what went wrong
    assert "ConnectionError" in body["checks"]["redis"]["error"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["channel_layer"]["ok"] is True
    assert "Traceback" not in response.content.decode()
    assert elapsed < 5


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
def test_readyz__redis_layer_on_unreachable_redis_fails_within_the_probe_timeout(
    blackhole_redis_url: str,
) -> None:
    # given: the pub/sub layer and the Redis probe both on a Redis that accepts the
    # connection and then never answers (no refusal, no error: only the timeout ends it)
    url = blackhole_redis_url
    layers = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": None}]},
        }
    }
    answered: dict = {}

    def ask() -> None:
        with override_settings(REDIS_URL=url, CHANNEL_LAYERS=layers):
            answered["response"] = Client().get("/readyz")

    # when: asked from a thread, so that a probe hanging for good fails this test
    # instead of hanging it
    started = time.monotonic()
    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(PROBE_TIMEOUT_S + 3)
    elapsed = time.monotonic() - started

    # then: it answered within the probe timeout (plus a margin for a loaded machine),
    # after waiting that timeout out, and says both Redis parts failed by timing out
    assert "response" in answered, f"/readyz did not answer within {elapsed:.1f} s"
    assert elapsed >= PROBE_TIMEOUT_S * 0.9  # the probes did hang: the timeout ended them
    response = answered["response"]
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    checks = body["checks"]
    assert checks["redis"]["ok"] is False
    assert checks["redis"]["error"].startswith("TimeoutError")
    assert checks["channel_layer"]["ok"] is False
    assert checks["channel_layer"]["error"].startswith("TimeoutError")
    assert checks["database"]["ok"] is True
    assert "Traceback" not in response.content.decode()


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_readyz__real_redis_reports_redis_and_the_redis_layer_ok(
    client: Client, redis_url: str
) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200, response.content
    checks = response.json()["checks"]
    assert set(checks) == {"database", "redis", "channel_layer", "process", "read_only_mode"}
    assert all(check["ok"] for check in checks.values()), checks


@pytest.mark.django_db(transaction=True)
@override_settings(REDIS_URL="", CHANNEL_LAYERS=IN_MEMORY)
def test_readyz__open_breaker__200_degraded_naming_it(client: Client) -> None:
    from core.breaker import redis_breaker

    breaker = redis_breaker("channel-layer")
    for _ in range(breaker.failure_threshold):
        with pytest.raises(OSError):
            breaker.call(_refuse)

    response = client.get("/readyz")
    body = response.json()

    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert body["checks"]["process"]["ok"] is False
    assert body["checks"]["process"]["breakers"]["channel-layer"] == "open"
    assert "channel-layer" in body["checks"]["process"]["error"]


@pytest.mark.django_db(transaction=True)
@override_settings(REDIS_URL="", CHANNEL_LAYERS=IN_MEMORY)
def test_readyz__draining__503_shutting_down(client: Client, monkeypatch) -> None:
    from realtime.node import process as registry

    monkeypatch.setattr(registry, "draining", True)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["status"] == "not_ready"
    assert response.json()["checks"]["process"]["error"] == "shutting down: draining connections"


def _refuse() -> None:
    raise ConnectionRefusedError("refused")
