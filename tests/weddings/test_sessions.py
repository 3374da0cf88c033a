"""Sessions are read through the cache (cached_db) and survive a Redis outage."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from django.test import Client, override_settings

from tests.factories import make_user

pytestmark = pytest.mark.django_db


def dead_redis_cache(ignore_exceptions: bool) -> dict:
    options = {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1}
    if ignore_exceptions:
        options["IGNORE_EXCEPTIONS"] = True
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
            "OPTIONS": options,
        }
    }


@pytest.mark.redis  # the embedded default has no Redis cache; CI=true fails without one
def test_settings__redis_cache_ignores_redis_errors() -> None:
    assert settings.CACHES["default"]["OPTIONS"]["IGNORE_EXCEPTIONS"] is True


def test_signed_in_user__redis_down__session_read_from_the_database() -> None:
    user = make_user(is_staff=True, is_superuser=True)
    client = Client()
    with override_settings(CACHES=dead_redis_cache(ignore_exceptions=True)):
        client.force_login(user)

        response = client.get("/admin/")

    assert response.status_code == 200
    assert response.context["user"] == user


def test_without_ignore_exceptions__redis_down_breaks_the_session() -> None:
    # The reason for IGNORE_EXCEPTIONS: without it the same request fails.
    user = make_user(is_staff=True, is_superuser=True)
    client = Client(raise_request_exception=True)
    with (
        override_settings(CACHES=dead_redis_cache(ignore_exceptions=False)),
        pytest.raises(redis.ConnectionError),
    ):
        client.force_login(user)
