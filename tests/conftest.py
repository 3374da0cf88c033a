"""Shared fixtures: real Redis and PostgreSQL when configured, and small data builders.

Tests marked ``redis`` or ``postgres`` need the real service. Without it they skip with
the reason on a laptop; with ``CI=true`` they fail instead, so CI never skips them.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from django.conf import settings

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


# The test process runs many threads that each hold a pooled connection at once (the
# realtime database threads of in-process consumers, reused request threads, concurrency
# tests): more than one server process's 8. Server processes the tests start keep theirs.
if "pool" in settings.DATABASES["default"].get("OPTIONS", {}):
    settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"] = 24


@pytest.fixture(autouse=True)
def _require_services(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("redis"):
        if not settings.REDIS_URL:
            _missing("REDIS_URL is not set (export REDIS_URL=redis://127.0.0.1:6379/0)")
        elif not _redis_answers(settings.REDIS_URL):
            _missing(f"Redis at {settings.REDIS_URL} does not answer")
    if request.node.get_closest_marker("postgres"):
        if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
            _missing("DATABASE_URL is not PostgreSQL (export DATABASE_URL=postgres://...)")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Tests make many users; the real hasher costs ~0.3 s each and tests nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _isolated_cache(settings: Any) -> Any:
    """Each test gets an empty process cache under its own Redis namespace, and closed
    Redis breakers."""
    from core.breaker import breakers_reset
    from core.cache import reset_cache

    settings.CACHE_NAMESPACE = f"test-{uuid.uuid4().hex[:12]}"
    reset_cache()
    breakers_reset()
    yield
    reset_cache()
    breakers_reset()


@pytest.fixture(scope="session", autouse=True)
def _own_metric_files_removed() -> Any:
    """The test process's metric files leave the shared directory with it, so that a
    developer's running stack does not count the tests' publishes."""
    yield
    from core.metrics import metrics_dir

    for path in metrics_dir().glob(f"*_{os.getpid()}.db"):
        path.unlink(missing_ok=True)


@pytest.fixture
def redis_url() -> str:
    """The real Redis of this run; the test is skipped (or fails in CI) without one."""
    if not settings.REDIS_URL:
        _missing("REDIS_URL is not set (export REDIS_URL=redis://127.0.0.1:6379/0)")
    if not _redis_answers(settings.REDIS_URL):
        _missing(f"Redis at {settings.REDIS_URL} does not answer")
    return settings.REDIS_URL


@pytest.fixture
def redis_key_prefix(redis_url: str) -> Any:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
