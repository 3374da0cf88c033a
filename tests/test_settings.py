"""Settings in both modes, read by a fresh interpreter with a controlled environment, and
the system checks of wedsync/checks.py."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from wedsync import checks

BASE_DIR = Path(__file__).resolve().parent.parent
SETTINGS_FILE = BASE_DIR / "wedsync" / "settings.py"
CONFIGURATION_DOC = BASE_DIR / "docs" / "configuration.md"
REDIS_URL = "redis://127.0.0.1:6379/5"
POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/wedsync_stack"

# What `check --deploy` may still say in production; each is explained in
# docs/configuration.md. A new one fails test_check_deploy__... until it is handled.
EXPECTED_DEPLOY_WARNINGS = {"security.W021"}

# Prints the settings that tell the two modes apart, as JSON.
_DUMP = """
import json
import django
from django.conf import settings
django.setup()
from channels.layers import get_channel_layer
from wedsync.celery import app
layer = settings.CHANNEL_LAYERS["default"]
print(json.dumps({
    "VAR_DIR": str(settings.VAR_DIR),
    "DEBUG": settings.DEBUG,
    "EMBEDDED": settings.EMBEDDED,
    "layer_backend": layer["BACKEND"],
    "layer_hosts": layer.get("CONFIG", {}).get("hosts"),
    "layer_class": type(get_channel_layer()).__name__,
    "cache": settings.CACHES["default"],
    "broker_url": settings.CELERY_BROKER_URL,
    "broker_options": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    "celery_broker_url": app.conf.broker_url,
    "celery_always_eager": app.conf.task_always_eager,
    "always_eager": settings.CELERY_TASK_ALWAYS_EAGER,
    "db_engine": settings.DATABASES["default"]["ENGINE"],
    "db_name": str(settings.DATABASES["default"]["NAME"]),
}, default=str))
"""


def settings_env_names() -> set[str]:
    """Every environment variable settings.py reads (env.str("NAME", ...) and the like)."""
    return set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z][A-Z0-9_]*)"', SETTINGS_FILE.read_text()))


def clean_env(**overrides: str) -> dict[str, str]:
    """os.environ without anything settings.py reads, no .env file, plus ``overrides``."""
    dropped = settings_env_names() | {"REDIS_URL", "DATABASE_URL"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in dropped and not key.startswith("DJANGO_")
    }
    env.update(DJANGO_READ_DOT_ENV_FILE="false", DJANGO_SETTINGS_MODULE="wedsync.settings")
    env.update(overrides)
    return env


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def dump_settings(**env: str) -> dict[str, Any]:
    result = run_python(_DUMP, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_ids(output: str) -> set[str]:
    return set(re.findall(r"\(([a-z_]+\.[EW]\d{3})\)", output))


# --- (a) the embedded default -------------------------------------------------------------


def test_embedded__no_redis_url_gives_in_process_parts_under_var() -> None:
    # when
    values = dump_settings(DJANGO_DEBUG="true")

    # then
    var_dir = values["VAR_DIR"]
    assert var_dir == str(BASE_DIR / "var")
    assert values["EMBEDDED"] is True
    assert values["layer_backend"] == "channels.layers.InMemoryChannelLayer"
    assert values["layer_class"] == "InMemoryChannelLayer"
    assert values["cache"]["BACKEND"] == "django.core.cache.backends.locmem.LocMemCache"
    assert values["broker_url"] == "filesystem://"
    assert values["celery_broker_url"] == "filesystem://"
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        assert values["broker_options"][key].startswith(f"{var_dir}/celery/"), key
    assert values["db_engine"] == "django.db.backends.sqlite3"
    assert values["db_name"] == f"{var_dir}/wedsync.sqlite3"
    assert values["always_eager"] is False
    assert values["celery_always_eager"] is False


def test_embedded__celery_broker_dir_moves_every_broker_folder(tmp_path: Path) -> None:
    values = dump_settings(DJANGO_DEBUG="true", CELERY_BROKER_DIR=str(tmp_path / "broker"))

    folders = {
        key: values["broker_options"][key]
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")
    }
    assert all(folder.startswith(f"{tmp_path}/broker/") for folder in folders.values()), folders


# --- (b) Redis and PostgreSQL ----------------------------------------------------------------


def test_redis__redis_url_builds_layer_cache_and_broker_from_one_url() -> None:
    values = dump_settings(DJANGO_DEBUG="true", REDIS_URL=REDIS_URL, DATABASE_URL=POSTGRES_URL)

    assert values["EMBEDDED"] is False
    assert values["layer_backend"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    assert values["layer_class"] == "RedisPubSubChannelLayer"
    assert values["layer_hosts"] == [{"address": REDIS_URL, "socket_timeout": None}]
    assert values["cache"]["BACKEND"] == "django_redis.cache.RedisCache"
    assert values["cache"]["LOCATION"] == REDIS_URL
    assert values["cache"]["OPTIONS"]["COMPRESSOR"] == "django_redis.compressors.lz4.Lz4Compressor"
    assert values["broker_url"] == REDIS_URL
    assert values["celery_broker_url"] == REDIS_URL
    assert values["db_engine"] == "django.db.backends.postgresql"
    assert values["db_name"] == "wedsync_stack"
    assert values["celery_always_eager"] is False


def test_settings__redis_cache_ignores_redis_errors() -> None:
    # Sessions live in this cache (cached_db): with Redis down a read must be a miss, not
    # an error page (tests/weddings/test_sessions.py shows both sides). Read from settings
    # built for Redis in a fresh interpreter, so it runs with or without a Redis here.
    values = dump_settings(DJANGO_DEBUG="true", REDIS_URL=REDIS_URL)

    assert values["cache"]["BACKEND"] == "django_redis.cache.RedisCache"
    assert values["cache"]["OPTIONS"]["IGNORE_EXCEPTIONS"] is True


def test_redis__channel_layer_core_selects_the_core_layer_with_no_read_timeout() -> None:
    values = dump_settings(DJANGO_DEBUG="true", REDIS_URL=REDIS_URL, CHANNEL_LAYER="core")

    assert values["layer_backend"] == "channels_redis.core.RedisChannelLayer"
    assert values["layer_class"] == "RedisChannelLayer"
    assert values["layer_hosts"] == [{"address": REDIS_URL, "socket_timeout": None}]


def test_redis__unknown_channel_layer_fails_with_a_clear_message() -> None:
    result = run_python(
        "from django.conf import settings; settings.DEBUG",
        DJANGO_DEBUG="true",
        REDIS_URL=REDIS_URL,
        CHANNEL_LAYER="bogus",
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "CHANNEL_LAYER must be 'pubsub' or 'core', not 'bogus'" in result.stderr


@pytest.mark.parametrize("value", ["0", "500"])
def test_switch_interval__out_of_range_fails_with_a_clear_message(value: str) -> None:
    result = run_python(
        "from django.conf import settings; settings.DEBUG",
        DJANGO_DEBUG="true",
        SERVER_SWITCH_INTERVAL_MS=value,
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SERVER_SWITCH_INTERVAL_MS must be between 0.1 and 100" in result.stderr


# --- (c) secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize("debug", [{"DJANGO_DEBUG": "false"}, {}], ids=["debug-false", "unset"])
def test_secret_key__missing_without_debug_refuses_to_start(debug: dict[str, str]) -> None:
    result = run_python(
        "from django.conf import settings; print('KEY=' + settings.SECRET_KEY)", **debug
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_SECRET_KEY must be set" in result.stderr
    assert "KEY=" not in result.stdout


def test_secret_key__given_key_is_used() -> None:
    key = secrets.token_urlsafe(50)
    result = run_python(
        "from django.conf import settings; print(settings.SECRET_KEY)",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=key,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == key


# --- (d) check --deploy ---------------------------------------------------------------------------


def test_check_deploy__production_env_has_no_errors_and_only_documented_warnings() -> None:
    # given
    production = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "wedsync.example.com",
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": POSTGRES_URL,
    }

    # when
    result = manage("check", "--deploy", **production)

    # then
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERRORS:" not in output
    assert check_ids(output) == EXPECTED_DEPLOY_WARNINGS, output
    doc = CONFIGURATION_DOC.read_text()
    for check_id in EXPECTED_DEPLOY_WARNINGS:
        assert f"`{check_id}`" in doc, f"{check_id} is not explained in docs/configuration.md"


# --- (e) system checks --------------------------------------------------------------------------

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
PUBSUB = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
    }
}
CORE = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
    }
}
SQLITE = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3"}}
POSTGRES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "wedsync"}}


def ids_of(messages: list[Any]) -> list[str]:
    return [message.id for message in messages]


@pytest.mark.parametrize(
    ("concurrency", "layers", "expected"),
    [
        (2, IN_MEMORY, ["wedsync.E001"]),
        (8, IN_MEMORY, ["wedsync.E001"]),
        (1, IN_MEMORY, []),
        (4, PUBSUB, []),
        (4, CORE, []),
    ],
)
def test_check_e001__several_processes_need_a_shared_layer(
    concurrency: int, layers: dict, expected: list[str]
) -> None:
    with override_settings(WEB_CONCURRENCY=concurrency, CHANNEL_LAYERS=layers):
        messages = checks.check_web_concurrency()

    assert ids_of(messages) == expected
    assert all(m.hint and "REDIS_URL" in m.hint for m in messages)


@pytest.mark.parametrize(
    ("debug", "redis_url", "expected"),
    [(False, "", ["wedsync.W001"]), (True, "", []), (False, REDIS_URL, [])],
)
def test_check_w001__embedded_default_without_debug(
    debug: bool, redis_url: str, expected: list[str]
) -> None:
    with override_settings(DEBUG=debug, REDIS_URL=redis_url):
        messages = checks.check_embedded_in_production()

    assert ids_of(messages) == expected
    assert all(m.hint and "REDIS_URL" in m.hint for m in messages)


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.parametrize(
    ("debug", "databases", "expected"),
    [(False, SQLITE, ["wedsync.W002"]), (True, SQLITE, []), (False, POSTGRES, [])],
)
def test_check_w002__sqlite_without_debug(
    debug: bool, databases: dict, expected: list[str]
) -> None:
    with override_settings(DEBUG=debug, DATABASES=databases):
        messages = checks.check_sqlite_in_production()

    assert ids_of(messages) == expected
    assert all(m.hint and "DATABASE_URL" in m.hint for m in messages)


@pytest.mark.parametrize(
    ("redis_url", "layers", "expected"),
    [(REDIS_URL, CORE, ["wedsync.W003"]), (REDIS_URL, PUBSUB, []), ("", IN_MEMORY, [])],
)
def test_check_w003__core_layer_drops_group_messages(
    redis_url: str, layers: dict, expected: list[str]
) -> None:
    with override_settings(REDIS_URL=redis_url, CHANNEL_LAYERS=layers):
        messages = checks.check_core_channel_layer()

    assert ids_of(messages) == expected
    assert all(m.hint and "CHANNEL_LAYER" in m.hint for m in messages)


def test_checks__registered_and_run_by_manage_check() -> None:
    # given: the embedded default declared with two server processes, DEBUG off
    env = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "WEB_CONCURRENCY": "2",
    }

    # when
    result = manage("check", "--tag", "wedsync", **env)

    # then
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert check_ids(output) == {"wedsync.E001", "wedsync.W001", "wedsync.W002"}, output


def test_checks__quiet_on_the_embedded_default_for_development() -> None:
    result = manage("check", "--tag", "wedsync", DJANGO_DEBUG="true")

    assert result.returncode == 0, result.stdout + result.stderr
    assert check_ids(result.stdout + result.stderr) == set()


def test_checks__core_layer_warns_through_manage_check() -> None:
    result = manage(
        "check", "--tag", "wedsync", DJANGO_DEBUG="true", REDIS_URL=REDIS_URL, CHANNEL_LAYER="core"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert check_ids(result.stdout + result.stderr) == {"wedsync.W003"}


# --- documentation ------------------------------------------------------------------------------


def test_configuration_doc__lists_every_environment_variable_and_check() -> None:
    doc = CONFIGURATION_DOC.read_text()

    missing = sorted(name for name in settings_env_names() if f"`{name}`" not in doc)
    assert not missing, f"not documented in docs/configuration.md: {missing}"
    for check_id in ("wedsync.E001", "wedsync.W001", "wedsync.W002", "wedsync.W003"):
        assert f"`{check_id}`" in doc
