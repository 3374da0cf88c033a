"""System checks for dangerous configurations (stable IDs: wedsync.E0xx / wedsync.W0xx).

They run before every management command that checks (runserver, runstack, migrate ...)
and with ``manage.py check``; ``manage.py check --tag wedsync`` runs only these.
docs/configuration.md says what each one means and what to do about it.

wedsync.E002 (a Redis channel layer without ``socket_timeout: None``) is not a check:
settings.py always builds the host with it and no environment variable can change that;
tests/test_settings.py holds it in place.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

TAG = "wedsync"

IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"
CORE_LAYER = "channels_redis.core.RedisChannelLayer"


def _layer_backend() -> str:
    return settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")


@register(Tags.async_support, TAG)
def check_web_concurrency(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """wedsync.E001: several declared server processes cannot share an in-process layer."""
    concurrency = getattr(settings, "WEB_CONCURRENCY", 1)
    if concurrency > 1 and _layer_backend() == IN_MEMORY_LAYER:
        return [
            Error(
                f"WEB_CONCURRENCY={concurrency} with the in-process channel layer: an event "
                "published in one server process would never reach the clients connected "
                "to another.",
                hint=(
                    "Set REDIS_URL so that every process shares the Redis channel layer, "
                    "or run one server process (WEB_CONCURRENCY=1)."
                ),
                id="wedsync.E001",
            )
        ]
    return []


@register(Tags.caches, TAG)
def check_embedded_in_production(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """wedsync.W001: the embedded default with DEBUG off, which looks like production."""
    if not settings.DEBUG and not getattr(settings, "REDIS_URL", ""):
        return [
            Warning(
                "DEBUG is off but REDIS_URL is not set: the in-process channel layer, the "
                "local-memory cache and the filesystem Celery broker are for development "
                "and one process only.",
                hint=(
                    "Set REDIS_URL=redis://... for production, or DJANGO_DEBUG=true for local use."
                ),
                id="wedsync.W001",
            )
        ]
    return []


@register(Tags.database, TAG)
def check_sqlite_in_production(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """wedsync.W002: SQLite with DEBUG off: one writer at a time, on one machine."""
    engine = settings.DATABASES.get("default", {}).get("ENGINE", "")
    if not settings.DEBUG and engine == "django.db.backends.sqlite3":
        return [
            Warning(
                "DEBUG is off but the database is SQLite: every write waits for the one "
                "writer, and only processes on this machine can reach it.",
                hint="Set DATABASE_URL=postgres://... for production.",
                id="wedsync.W002",
            )
        ]
    return []


@register(Tags.async_support, TAG)
def check_core_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """wedsync.W003: the core Redis layer drops whole groups silently when a process lags."""
    if getattr(settings, "REDIS_URL", "") and _layer_backend() == CORE_LAYER:
        return [
            Warning(
                "The channel layer is channels_redis's core layer (CHANNEL_LAYER=core): "
                "once a server process is about 100 group messages behind, group_send "
                "drops the message for every member in that process, leaving only an "
                "INFO log line. Clients then see seq gaps and fall back to replay.",
                hint=(
                    "Unset CHANNEL_LAYER (the pub/sub layer is the default) unless you "
                    "need the core layer; see docs/configuration.md."
                ),
                id="wedsync.W003",
            )
        ]
    return []


# The HS256 secret's minimum, as realtime.jwt_auth.MIN_SECRET_BYTES (the composition root
# reads settings only; tests/realtime/test_jwt.py holds the two equal).
JWT_MIN_SECRET_BYTES = 32
# A JWKS over plain http is accepted from this host only: nothing between can change it.
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@register(Tags.security, TAG)
def check_jwt_secret(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """wedsync.E003: an HS256 secret short enough to be guessed offline from one JWT."""
    secret = getattr(settings, "REALTIME_JWT_SECRET", "")
    if secret and len(secret.encode()) < JWT_MIN_SECRET_BYTES:
        return [
            Error(
                f"REALTIME_JWT_SECRET is {len(secret.encode())} bytes: anyone holding one "
                "platform JWT could guess a secret this short offline and sign in as anyone.",
                hint=(
                    f"Use the platform's JWT secret as it is (Supabase's is at least "
                    f"{JWT_MIN_SECRET_BYTES} characters), or leave it empty to turn HS256 off."
                ),
                id="wedsync.E003",
            )
        ]
    return []


@register(Tags.security, TAG)
def check_jwt_jwks_url(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """wedsync.E004: signing keys fetched where they could be swapped on the way."""
    url = getattr(settings, "REALTIME_JWT_JWKS_URL", "")
    if not url:
        return []
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return []
    if parts.scheme == "http" and (settings.DEBUG or parts.hostname in _LOOPBACK):
        return []
    return [
        Error(
            f"REALTIME_JWT_JWKS_URL is not an https URL ({url!r}): whoever can change the "
            "keys on the way can sign in as anyone.",
            hint=(
                "Use the platform's https JWKS URL, e.g. "
                "https://<project>.supabase.co/auth/v1/.well-known/jwks.json "
                "(plain http only to 127.0.0.1, or with DJANGO_DEBUG=true)."
            ),
            id="wedsync.E004",
        )
    ]
