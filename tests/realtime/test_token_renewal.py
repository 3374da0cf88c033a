"""Token renewal (PROTOCOL §2, docs/operations.md): a token issued on the strength of a
token never outlives it, over HTTP against a real server process, on both paths: the lean
bearer path (wedsync/server/token_api.py) and the session path (the full middleware).
"""

from __future__ import annotations

import http.client
import time
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.test import Client

from realtime.tokens import token_authenticate, token_expires_at, token_issue
from tests.factories import make_user
from tests.servers import Server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]

WEEK = 7 * 24 * 3600
CSRF_SECRET = "a" * 32  # a CSRF cookie of Django's own shape (CSRF_SECRET_LENGTH)


@pytest.fixture
def server():
    server = Server("uvicorn")
    try:
        yield server
    finally:
        server.stop()


def post_token(server: Server, ttl: int, **headers: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request(
            "POST",
            "/api/realtime/token",
            body=orjson.dumps({"ttl": ttl}),
            headers={"Host": "127.0.0.1", "Content-Type": "application/json", **headers},
        )
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        conn.close()


def test_bearer_renewal__capped_at_the_presenting_token_expiry(server):
    # given a token that expires in an hour
    user = make_user()
    short = token_issue(user=user, ttl=3600)
    short_expiry = token_expires_at(short)

    # when it asks for a 7-day token
    status, body = post_token(server, WEEK, Authorization=f"Bearer {short}")

    # then it gets a valid token for the same user that expires with the one presented
    assert status == 200, body
    assert body["expires_at"] == token_expires_at(body["token"]) == short_expiry
    assert token_authenticate(body["token"]).pk == user.pk

    # and renewing with the new token cannot push the expiry out either
    status, again = post_token(server, WEEK, Authorization=f"Bearer {body['token']}")
    assert status == 200, again
    assert again["expires_at"] == short_expiry


def test_bearer_renewal__shorter_ttl_than_the_presenting_token__kept(server):
    # given a 7-day token
    user = make_user()
    long = token_issue(user=user, ttl=WEEK)

    # when it asks for a 1-minute token
    before = int(time.time())
    status, body = post_token(server, 60, Authorization=f"Bearer {long}")

    # then the new token lives about a minute, not as long as the one presented
    assert status == 200, body
    assert before + 60 <= body["expires_at"] <= int(time.time()) + 61
    assert body["expires_at"] < token_expires_at(long)


def test_session_renewal__unchanged_full_ttl(server):
    # given a signed-in browser session (its cookie, with a CSRF cookie and header)
    user = make_user()
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value

    # when it asks for a 7-day token
    cookies = f"{settings.SESSION_COOKIE_NAME}={session}; {settings.CSRF_COOKIE_NAME}={CSRF_SECRET}"
    before = int(time.time())
    status, body = post_token(server, WEEK, Cookie=cookies, **{"X-CSRFToken": CSRF_SECRET})

    # then it gets the whole week
    assert status == 200, body
    assert body["expires_at"] >= before + WEEK
    assert token_authenticate(body["token"]).pk == user.pk


def test_expired_bearer__refused(server):
    # given a token issued for one second, now expired (polled, not slept on)
    user = make_user()
    token = token_issue(user=user, ttl=1)
    deadline = time.monotonic() + 10
    while time.time() < token_expires_at(token):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    # then it cannot renew itself
    status, body = post_token(server, WEEK, Authorization=f"Bearer {token}")
    assert status == 401, body
