"""``X-Forwarded-Proto`` is trusted only when a proxy is declared
(``DJANGO_SECURE_PROXY_SSL_HEADER``); probes over plain HTTP are not redirected.

Settings are read by a fresh interpreter in production shape (DEBUG off, SSL redirect on,
as ``runstack`` runs), which then drives Django's test client."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from tests.test_settings import run_python

_REQUESTS = """
import json
import django
from django.conf import settings
django.setup()
from django.test import Client
from wedsync.server.runstack import _allowed_host

client = Client(HTTP_HOST="wedsync.example.com")
def ask(path, **extra):
    r = client.get(path, **extra)
    return {"status": r.status_code, "location": r.get("Location", ""),
            "hsts": "Strict-Transport-Security" in r}
print(json.dumps({
    "setting": settings.SECURE_PROXY_SSL_HEADER,
    "ssl_redirect": settings.SECURE_SSL_REDIRECT,
    "page_plain": ask("/"),
    "page_forwarded": ask("/", HTTP_X_FORWARDED_PROTO="https"),
    "healthz_plain": ask("/healthz"),
    "healthz_forwarded": ask("/healthz", HTTP_X_FORWARDED_PROTO="https"),
    "readyz_plain": ask("/readyz"),
}))
"""


def requests_in_production(tmp_path: Path, **env: str) -> dict[str, Any]:
    result = run_python(
        _REQUESTS,
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="wedsync.example.com",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CELERY_BROKER_DIR=str(tmp_path / "celery"),
        **env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_forwarded_proto__not_trusted_by_default(tmp_path: Path) -> None:
    answers = requests_in_production(tmp_path)

    assert answers["setting"] is None
    assert answers["ssl_redirect"] is True
    # a client claiming https over plain HTTP is still redirected, and gets no HSTS
    assert answers["page_forwarded"]["status"] == 301
    assert answers["page_forwarded"]["location"] == "https://wedsync.example.com/"
    assert answers["healthz_forwarded"]["hsts"] is False
    assert answers["page_plain"]["status"] == 301


def test_forwarded_proto__trusted_when_the_proxy_is_declared(tmp_path: Path) -> None:
    answers = requests_in_production(tmp_path, DJANGO_SECURE_PROXY_SSL_HEADER="true")

    assert answers["setting"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert answers["page_forwarded"]["status"] != 301  # the proxy said https: served
    assert answers["healthz_forwarded"]["hsts"] is True
    assert answers["page_plain"]["status"] == 301  # without the header: redirected


def test_probes__plain_http_is_not_redirected(tmp_path: Path) -> None:
    # load balancers (and runstack's start-up probe) ask over plain HTTP inside the network
    answers = requests_in_production(tmp_path)

    assert answers["healthz_plain"]["status"] == 200
    assert answers["healthz_forwarded"]["status"] == 200
    assert answers["readyz_plain"]["status"] in (200, 503)


def test_runstack_probe__answered_200_in_production_shape_without_a_trusted_proxy(
    tmp_path: Path,
) -> None:
    # runstack's probe_healthz sends X-Forwarded-Proto: https; with the header no longer
    # trusted, /healthz must still answer 200 (it is exempt from the SSL redirect)
    code = _REQUESTS.split("print(")[0] + (
        "print(json.dumps(client.get('/healthz', HTTP_HOST=_allowed_host('127.0.0.1'),"
        " HTTP_X_FORWARDED_PROTO='https').status_code))"
    )
    result = run_python(
        code,
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1,wedsync.example.com",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CELERY_BROKER_DIR=str(tmp_path / "celery"),
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "200"
