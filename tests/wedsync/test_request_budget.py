"""Every HTTP client's request budget, refused before Django (wedsync/server/request_budget.py,
``HTTP_REQUEST_RATE``/``_BURST``; docs/security.md "No member can flood a wedding"),
against a real server process: over the budget a client gets 429 with ``Retry-After``
and a JSON error, other clients and the probes are served as before."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from tests.servers import Server
from wedsync.server.request_budget import client_key

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

BURST = 3


@pytest.fixture
def server() -> Iterator[Server]:
    # A budget that refills slowly: one request every 10 s after a burst of 3.
    server = Server("uvicorn", HTTP_REQUEST_RATE="0.1", HTTP_REQUEST_BURST=str(BURST))
    try:
        yield server
    finally:
        server.stop()


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]):
    conn.request("GET", path, headers={"Host": "127.0.0.1", **headers})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_over_the_budget__429_with_retry_after_before_django_others_served(server: Server):
    # given: a client with a bearer token, on one kept-alive connection
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    flooder = {"Authorization": "Bearer not-a-real-token"}

    # when: it sends one request more than its burst
    answers = [_get(conn, "/api/weddings/", flooder) for _ in range(BURST + 1)]

    # then: the burst reaches Django (the token is refused there: 401), the next is 429
    # from the budget, as JSON, with when to retry
    assert [status for status, _, _ in answers[:BURST]] == [401] * BURST
    status, headers, body = answers[BURST]
    assert status == 429
    error = json.loads(body)["error"]
    assert error["code"] == "rate_limited"
    assert 1 <= int(headers["retry-after"]) <= 10
    assert 0 < error["retry_after_ms"] <= 10_000
    assert headers["content-type"] == "application/json"

    # and: probes are never counted, on the same connection with the same credentials
    for _ in range(2 * BURST):
        assert _get(conn, "/healthz", flooder)[0] == 200

    # and: another client (other credentials, a session cookie, or none) has its own budget
    others = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    assert _get(others, "/api/weddings/", {"Authorization": "Bearer another"})[0] == 401
    assert _get(others, "/api/weddings/", {"Cookie": "sessionid=abc"})[0] != 429
    assert _get(others, "/healthz", {})[0] == 200


def test_client_key__credentials_then_session_then_address():
    def scope(*headers: tuple[bytes, bytes]) -> dict:
        return {"type": "http", "headers": list(headers), "client": ("10.0.0.7", 5555)}

    token_a = client_key(scope((b"authorization", b"Bearer a")))
    token_b = client_key(scope((b"authorization", b"Bearer b")))
    session_a = client_key(scope((b"cookie", b"theme=dark; sessionid=abc; x=1")))
    session_b = client_key(scope((b"cookie", b"sessionid=xyz")))
    anonymous = client_key(scope((b"cookie", b"theme=dark")))

    assert token_a != token_b and token_a[0] == "credentials"
    assert session_a != session_b and session_a[0] == "session"
    assert anonymous == ("address", "10.0.0.7")
    # the credentials win over a cookie sent beside them; nothing of them is kept as sent
    both = client_key(scope((b"cookie", b"sessionid=abc"), (b"authorization", b"Bearer a")))
    assert both == token_a
    assert b"Bearer a" not in repr(token_a).encode()
