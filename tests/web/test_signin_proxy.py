"""Sign-in throttling behind a reverse proxy, on a real server process (`python -m
wedsync.serve`, production shape): django-axes locks a username per client address, and
that address is the one uvicorn takes from `X-Forwarded-For` only when the request comes
from a trusted proxy (`FORWARDED_ALLOW_IPS`, default 127.0.0.1: a proxy on the same
host). Otherwise every client behind the proxy would share its address (one attacker
locks a user out for everyone), or any client could pick its own (no lockout at all).
"""

from __future__ import annotations

import http.client
import re
import urllib.parse

import pytest

from tests.factories import make_user
from tests.servers import Server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(90)]

PASSWORD = "the right one"


def _sign_in(server: Server, username: str, password: str, client_ip: str) -> int:
    """One sign-in on the form, as a browser behind the proxy at ``client_ip``: the login
    page (its CSRF cookie and token), then the POST. Returns the POST's status (302 in,
    200 refused, 429 locked out)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    forwarded = {"X-Forwarded-For": client_ip, "Host": "localhost"}
    conn.request("GET", "/accounts/login/", headers=forwarded)
    page = conn.getresponse()
    body = page.read().decode()
    cookie = next(
        value.split(";", 1)[0]
        for name, value in page.getheaders()
        if name.lower() == "set-cookie" and value.startswith("csrftoken=")
    )
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body)[1]
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token}
    )
    conn.request(
        "POST",
        "/accounts/login/",
        body=form,
        headers={
            **forwarded,
            "Cookie": cookie,
            "Content-Type": "application/x-www-form-urlencoded",
            "Referer": "http://localhost/accounts/login/",
        },
    )
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def _user(settings) -> str:
    # A hash the server process verifies (the tests' own hasher is a fast one it lacks).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    user = make_user()
    user.set_password(PASSWORD)
    user.save(update_fields=["password"])
    return user.username


def test_behind_a_trusted_proxy__the_lockout_is_per_forwarded_client(settings):
    # given a server behind a proxy on its own host (uvicorn trusts 127.0.0.1)
    username = _user(settings)
    server = Server(AXES_FAILURE_LIMIT="3")
    try:
        # when one client behind the proxy guesses wrong until locked out
        statuses = [_sign_in(server, username, "wrong", "198.51.100.1") for _ in range(3)]

        # then that client is locked out, even with the right password
        assert statuses == [200, 200, 429]
        assert _sign_in(server, username, PASSWORD, "198.51.100.1") == 429
        # and the user signs in from their own address behind the same proxy
        assert _sign_in(server, username, PASSWORD, "203.0.113.7") == 302
    finally:
        server.stop()


def test_from_an_untrusted_peer__x_forwarded_for_cannot_pick_the_address(settings):
    # given a server that trusts only a proxy elsewhere (not this test's 127.0.0.1)
    username = _user(settings)
    server = Server(AXES_FAILURE_LIMIT="3", FORWARDED_ALLOW_IPS="10.9.9.9")
    try:
        # when a client guesses wrong, claiming a new address each time
        statuses = [_sign_in(server, username, "wrong", f"198.51.100.{i}") for i in range(1, 4)]

        # then its claims are ignored: its real address is locked out after three
        assert statuses == [200, 200, 429]
        assert _sign_in(server, username, PASSWORD, "203.0.113.7") == 429
    finally:
        server.stop()
