"""Platform sign-in (PROTOCOL §2, v1.1; ADR 0021; docs/security.md): JWTs of the
platform's auth (Supabase Auth) wherever a realtime token is accepted: ``?token=`` on the
WebSocket, ``Authorization: Bearer`` on the HTTP API, and buying a connect ticket.

Tokens are signed here: HS256 with the shared secret, RS256 and ES256 with keys served
by a real JWKS server on 127.0.0.1 (``http.server`` in a thread). WebSockets go through
the real ASGI application; Redis and the database are the suite's real ones.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import math
import socket
import threading
import time
import uuid
from typing import Any

import jwt
import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import AsyncClient, override_settings

from realtime import jwt_auth
from realtime.models import ExternalIdentity
from realtime.tokens import TokenExpired, atoken_authenticate, token_issue, tokens_revoke_all
from tests.factories import make_user
from tests.realtime.test_consumer import Conn, world
from tests.realtime.test_tickets import close_code, outcome, subscribes
from wedsync import checks
from wedsync.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

SECRET = "a-platform-jwt-secret-of-forty-characters!"
ISSUER = "https://project.supabase.test/auth/v1"
JSON = "application/json"


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(autouse=True)
def hs256(settings: Any) -> None:
    """The platform's shared secret is configured (Supabase's "JWT secret"); no JWKS."""
    settings.REALTIME_JWT_SECRET = SECRET
    settings.REALTIME_JWT_JWKS_URL = ""
    settings.REALTIME_JWT_AUDIENCE = "authenticated"
    settings.REALTIME_JWT_ISSUER = ""
    settings.REALTIME_JWT_LEEWAY = 30


def claims_for(email: str | None = None, **overrides: Any) -> dict[str, Any]:
    """What Supabase puts in a signed-in user's access token, valid for an hour."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": str(uuid.uuid4()),
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + 3600,
        "email": email,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers or None)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def api_get(token: str) -> Any:
    """GET /api/weddings/ (a sync view: the sync authentication path)."""
    return await AsyncClient().get("/api/weddings/", headers=bearer(token))


async def buy_ticket(token: str) -> Any:
    """POST /api/realtime/ticket (an async view: the async authentication path)."""
    return await AsyncClient().post(
        "/api/realtime/ticket", b"", content_type=JSON, headers=bearer(token)
    )


def error_of(response: Any) -> dict[str, Any]:
    return orjson.loads(response.content)["error"]


@pytest.fixture
async def ws():
    """Opens WebSocket connections through the ASGI application; disconnects them all."""
    comms: list[WebsocketCommunicator] = []

    async def open_(query: str) -> Conn:
        comm = WebsocketCommunicator(application, f"/ws/realtime/?{query}")
        comms.append(comm)
        connected, _ = await comm.connect(timeout=5)
        assert connected  # refusals are accepted then closed with 4001
        return Conn(comm)

    yield open_
    for comm in comms:
        await comm.disconnect()


@database_sync_to_async
def user_with(email: str, **extra: Any) -> Any:
    return make_user(email=email, **extra)


@database_sync_to_async
def linked_subjects(user: Any) -> list[tuple[str, str]]:
    return list(ExternalIdentity.objects.filter(user=user).values_list("issuer", "subject"))


# --- HS256 on the three ways in ----------------------------------------------------------


async def test_websocket__jwt_in_token_param__connects_and_role_rules_apply(ws):
    # given a photographer booked on wedding A (not B), known to the platform by email
    w = await world()
    photographer = w["photographer"]
    photographer.email = "photo@example.com"
    await database_sync_to_async(photographer.save)()

    # when they connect with the platform's JWT
    conn = await ws("token=" + sign(claims_for("photo@example.com")))

    # then they are signed in as that user, with that user's rights only
    assert await outcome(conn) == "pong"
    assert await subscribes(conn, w["a"].topic)
    assert not await subscribes(conn, w["b"].topic)


async def test_http_bearer__jwt__lists_the_users_weddings():
    w = await world()
    w["other"].email = "florist@example.com"
    await database_sync_to_async(w["other"].save)()

    response = await api_get(sign(claims_for("florist@example.com")))

    assert response.status_code == 200, response.content
    ids = [wedding["id"] for wedding in orjson.loads(response.content)["weddings"]]
    assert ids == [w["b"].pk]


async def test_ticket__bought_with_a_jwt__connects_and_never_outlives_it(ws):
    # given a JWT with 20 s left
    await user_with("planner@example.com")
    token = sign(claims_for("planner@example.com", exp=int(time.time()) + 20))

    # when it buys a connect ticket
    response = await buy_ticket(token)

    # then the ticket lives no longer than the JWT, and opens a connection
    assert response.status_code == 200, response.content
    body = orjson.loads(response.content)
    assert body["expires_in"] <= 20
    assert await outcome(await ws("ticket=" + body["ticket"])) == "pong"


async def test_token_api__a_jwt_buys_a_realtime_token_capped_at_its_expiry():
    await user_with("couple@example.com")
    expires = int(time.time()) + 120

    response = await AsyncClient().post(
        "/api/realtime/token",
        b"{}",
        content_type=JSON,
        headers=bearer(sign(claims_for("couple@example.com", exp=expires))),
    )

    assert response.status_code == 200, response.content
    assert orjson.loads(response.content)["expires_at"] <= expires


async def test_realtime_tokens__still_accepted_beside_jwts(ws):
    user = await database_sync_to_async(make_user)()
    token = await database_sync_to_async(token_issue)(user=user)

    assert await outcome(await ws(f"token={token}")) == "pong"


async def test_not_configured__a_jwt_is_refused_like_any_unknown_token(settings, ws):
    await user_with("someone@example.com")
    token = sign(claims_for("someone@example.com"))
    settings.REALTIME_JWT_SECRET = ""

    response = await api_get(token)

    assert response.status_code == 401
    assert error_of(response)["message"] == "The token is invalid."
    assert await outcome(await ws(f"token={token}")) == 4001


# --- refusals ----------------------------------------------------------------------------

NOW = int(time.time())


REFUSALS = [
    (
        "expired beyond the leeway",
        sign(claims_for("r@example.com", iat=NOW - 600, exp=NOW - 60)),
        "The token has expired.",
    ),
    (
        "not valid yet (nbf)",
        sign(claims_for("r@example.com", nbf=NOW + 600)),
        "The token is not valid yet.",
    ),
    (
        "issued in the future (iat)",
        sign(claims_for("r@example.com", iat=NOW + 600)),
        "The token is not valid yet.",
    ),
    (
        "another audience",
        sign(claims_for("r@example.com", aud="anon")),
        "The token's audience is not accepted.",
    ),
    (
        "no audience (Supabase's anon key)",
        sign(claims_for("r@example.com", aud=None)),
        "The token has no 'aud' claim.",
    ),
    (
        "another secret",
        sign(claims_for("r@example.com"), key="another-secret-of-forty-characters-long!!"),
        "The token's signature does not verify.",
    ),
    (
        "alg none",
        jwt.encode(claims_for("r@example.com"), None, algorithm="none"),
        "The token's algorithm is not accepted.",
    ),
    (
        "HS512",
        sign(claims_for("r@example.com"), SECRET * 2, "HS512"),
        "The token's algorithm is not accepted.",
    ),
    (
        "RS256 with no JWKS configured",
        sign(
            claims_for("r@example.com"),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "RS256",
            kid="k",
        ),
        "The token's algorithm is not accepted.",
    ),
    ("no subject", sign(claims_for("r@example.com", sub=None)), "The token has no 'sub' claim."),
    ("no expiry", sign(claims_for("r@example.com", exp=None)), "The token has no 'exp' claim."),
    (
        "unknown user",
        sign(claims_for("nobody@example.com")),
        "No user matches the token's subject or email.",
    ),
    ("no email", sign(claims_for(None)), "No user matches the token's subject or email."),
    (
        "email not verified",
        sign(claims_for("r@example.com", user_metadata={"email_verified": False})),
        "No user matches the token's subject or email.",
    ),
]


@pytest.mark.parametrize(("case", "token", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_refused__401_with_the_reason_and_4001_on_the_websocket(ws, case, token, message):
    # given the user the tokens name by email
    await user_with("r@example.com")

    # when each is sent as a bearer token (both authentication paths) and as ?token=
    sync_path, async_path = await api_get(token), await buy_ticket(token)

    # then each is refused with a clear reason, and the WebSocket closes with 4001
    for response in (sync_path, async_path):
        assert response.status_code == 401, (case, response.content)
        assert error_of(response) == {"code": "unauthenticated", "message": message}
    assert await outcome(await ws(f"token={token}")) == 4001


async def test_refused__within_the_leeway__accepted():
    await user_with("late@example.com")
    now = int(time.time())

    # expired 10 s ago and valid from 10 s on, with 30 s of leeway
    response = await api_get(sign(claims_for("late@example.com", exp=now - 10, nbf=now + 10)))

    assert response.status_code == 200, response.content


async def test_refused__expired_jwt__keeps_the_token_expired_code():
    await user_with("exp@example.com")
    token = sign(claims_for("exp@example.com", iat=NOW - 600, exp=NOW - 60))

    with pytest.raises(TokenExpired) as refused:
        await atoken_authenticate(token)

    assert refused.value.code == "token_expired"  # a client renews, as for its tokens


async def test_refused__wrong_issuer_when_one_is_configured(settings):
    settings.REALTIME_JWT_ISSUER = ISSUER
    await user_with("iss@example.com")

    wrong = await api_get(sign(claims_for("iss@example.com", iss="https://elsewhere/auth/v1")))
    right = await api_get(sign(claims_for("iss@example.com")))

    assert (wrong.status_code, error_of(wrong)["message"]) == (
        401,
        "The token's issuer is not accepted.",
    )
    assert right.status_code == 200


async def test_refused__an_email_shared_by_two_users():
    await user_with("shared@example.com")
    await user_with("Shared@Example.com")

    response = await api_get(sign(claims_for("shared@example.com")))

    assert response.status_code == 401
    assert "matches more than one user" in error_of(response)["message"]


async def test_refused__a_staff_account_is_never_linked_by_email():
    staff = await user_with("ops@example.com", is_staff=True)

    response = await api_get(sign(claims_for("ops@example.com")))

    assert response.status_code == 401
    assert "linked to the platform by an administrator" in error_of(response)["message"]
    assert await linked_subjects(staff) == []


# --- matching users ----------------------------------------------------------------------


async def test_first_sight__stores_the_subject__which_then_finds_the_user_whatever_the_email():
    # given a user known by email only
    user = await user_with("first@example.com")
    claims = claims_for("first@example.com")

    # when a JWT of the platform first names them
    first = await api_get(sign(claims))

    # then the subject is stored against them
    assert first.status_code == 200, first.content
    assert await linked_subjects(user) == [(ISSUER, claims["sub"])]

    # when the email changes here and on the platform (to one of another user, even)
    user.email = "renamed@example.com"
    await database_sync_to_async(user.save)()
    other = await user_with("first@example.com")
    later = await atoken_authenticate(sign({**claims, "email": "first@example.com"}))

    # then the subject still finds the first user, not the other
    assert later.pk == user.pk
    assert await linked_subjects(other) == []


async def test_first_sight__a_second_subject_for_a_linked_user_is_refused():
    user = await user_with("twice@example.com")
    assert (await api_get(sign(claims_for("twice@example.com")))).status_code == 200

    # a new platform account with the same email (the old one deleted and made again)
    response = await api_get(sign(claims_for("twice@example.com")))

    assert response.status_code == 401
    assert "linked to another platform identity" in error_of(response)["message"]
    assert len(await linked_subjects(user)) == 1


async def test_unlinked_by_an_administrator__the_subject_no_longer_finds_the_user():
    # given a linked user whose row is cached
    user = await user_with("unlink@example.com")
    claims = claims_for("unlink@example.com")
    assert (await api_get(sign(claims))).status_code == 200
    user.email = "moved@example.com"
    await database_sync_to_async(user.save)()

    # when an administrator deletes the link
    await database_sync_to_async(ExternalIdentity.objects.filter(user=user).delete)()

    # then the subject is unknown again (the email no longer matches)
    response = await api_get(sign(claims))
    assert response.status_code == 401
    assert error_of(response)["message"] == "No user matches the token's subject or email."


# --- revocation --------------------------------------------------------------------------


async def test_deactivated_user__refused_and_open_connection_closed(ws):
    # given a JWT user connected
    user = await user_with("leaving@example.com")
    token = sign(claims_for("leaving@example.com"))
    conn = await ws(f"token={token}")
    assert await outcome(conn) == "pong"

    # when they are deactivated
    user.is_active = False
    await database_sync_to_async(user.save)()

    # then the connection closes with 4001 and the same JWT is refused
    assert await close_code(conn) == 4001
    response = await api_get(token)
    assert response.status_code == 401
    assert error_of(response)["message"] == "The token's user is inactive."
    assert await outcome(await ws(f"token={token}")) == 4001


async def test_sign_out_everywhere__refuses_jwts_issued_before_it_not_after(ws):
    # given a JWT user signed in
    user = await user_with("everywhere@example.com")
    claims = claims_for("everywhere@example.com")
    before = sign(claims)
    assert (await api_get(before)).status_code == 200

    # when they sign out everywhere
    await database_sync_to_async(tokens_revoke_all)(user)

    # then the JWT issued before is refused; one issued after (the next second) works
    refused = await api_get(before)
    assert refused.status_code == 401
    assert "signed out everywhere" in error_of(refused)["message"]
    assert await outcome(await ws(f"token={before}")) == 4001
    after = sign({**claims, "iat": math.ceil(time.time()) + 1})
    assert await outcome(await ws(f"token={after}")) == "pong"


# --- RS256 and ES256 from a JWKS ---------------------------------------------------------


class JwksServer:
    """A real JWKS endpoint on 127.0.0.1: serves ``keys`` (changeable), counts fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.delay = 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                time.sleep(server.delay)
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/auth/v1/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks(settings: Any):
    """The JWKS server, configured as the only key source."""
    server = JwksServer()
    settings.REALTIME_JWT_SECRET = ""
    settings.REALTIME_JWT_JWKS_URL = server.url
    yield server
    server.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch):
    """The JWKS cache's clock, frozen; returns a function that moves it on."""
    now = [time.monotonic()]
    monkeypatch.setattr(jwt_auth, "_monotonic", lambda: now[0])

    def advance(seconds: float) -> None:
        now[0] += seconds

    return advance


def new_key(alg: str) -> Any:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def hmac_by_hand(claims: dict[str, Any], secret: bytes, **headers: Any) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "HS256", "typ": "JWT", **headers}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def public_jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk = algorithm.to_jwk(private.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_jwks__signed_by_a_published_key__accepted_on_every_path(ws, jwks, alg):
    # given the platform's key published in its JWKS
    key = new_key(alg)
    jwks.keys = [public_jwk(key, "key-1", alg)]
    await user_with("asym@example.com")
    token = sign(claims_for("asym@example.com"), key, alg, kid="key-1")

    # then the JWT signs in over HTTP (sync and async) and on the WebSocket
    assert (await api_get(token)).status_code == 200
    assert (await buy_ticket(token)).status_code == 200
    assert await outcome(await ws(f"token={token}")) == "pong"
    assert jwks.fetches == 1  # the keys were cached


async def test_jwks__refuses_confusions_of_key_and_algorithm(jwks):
    rsa_key, ec_key = new_key("RS256"), new_key("ES256")
    jwks.keys = [public_jwk(rsa_key, "rsa", "RS256"), public_jwk(ec_key, "ec", "ES256")]
    await user_with("conf@example.com")
    claims = claims_for("conf@example.com")
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    # the classic confusion: HS256 "signed" with the public key, by hand (PyJWT refuses)
    hs_with_public_key = hmac_by_hand(claims, public_pem, kid="rsa")
    es_header_on_rsa_key = sign(claims, ec_key, "ES256", kid="rsa")
    unknown_kid = sign(claims, rsa_key, "RS256", kid="nobody")
    no_kid = sign(claims, rsa_key, "RS256")

    messages = [
        error_of(await api_get(token))["message"]
        for token in (hs_with_public_key, es_header_on_rsa_key, unknown_kid, no_kid)
    ]
    assert messages == [
        "The token's algorithm is not accepted.",
        "The token's algorithm is not accepted.",
        "The token's signing key (kid) is unknown.",
        "The token names no signing key (kid).",
    ]


async def test_jwks__key_rotation__a_new_kid_is_fetched_at_most_every_10s(jwks, clock):
    # given a token of the first key, accepted
    await user_with("rot@example.com")
    old, new = new_key("ES256"), new_key("ES256")
    jwks.keys = [public_jwk(old, "2026-01", "ES256")]
    claims = claims_for("rot@example.com")
    assert (await buy_ticket(sign(claims, old, "ES256", kid="2026-01"))).status_code == 200

    # when the platform rotates to a new key and signs with it at once
    jwks.keys = [public_jwk(new, "2026-02", "ES256")]
    rotated = sign(claims, new, "ES256", kid="2026-02")
    too_soon = await buy_ticket(rotated)

    # then within 10 s of the last fetch the unknown kid costs no fetch
    assert error_of(too_soon)["message"] == "The token's signing key (kid) is unknown."
    assert jwks.fetches == 1

    # when 10 s have passed, the unknown kid fetches the JWKS again and is accepted
    clock(jwt_auth.JWKS_REFETCH_INTERVAL)
    assert (await buy_ticket(rotated)).status_code == 200
    assert jwks.fetches == 2

    # and the retired key, gone from the JWKS, is refused
    retired = await buy_ticket(sign(claims, old, "ES256", kid="2026-01"))
    assert error_of(retired)["message"] == "The token's signing key (kid) is unknown."


async def test_jwks__keys_expire_after_the_ttl_and_are_fetched_again(jwks, clock, settings):
    settings.REALTIME_JWT_JWKS_TTL = 600
    key = new_key("RS256")
    jwks.keys = [public_jwk(key, "k", "RS256")]
    await user_with("ttl@example.com")
    token = sign(claims_for("ttl@example.com"), key, "RS256", kid="k")

    assert (await buy_ticket(token)).status_code == 200
    clock(599)
    assert (await buy_ticket(token)).status_code == 200
    assert jwks.fetches == 1
    clock(2)
    assert (await buy_ticket(token)).status_code == 200
    assert jwks.fetches == 2


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks.json"


async def test_jwks__unreachable__a_clear_refusal_not_an_error(ws, settings, caplog):
    # given a JWKS URL nothing answers on
    settings.REALTIME_JWT_SECRET = ""
    settings.REALTIME_JWT_JWKS_URL = closed_port_url()
    await user_with("down@example.com")
    token = sign(claims_for("down@example.com"), new_key("RS256"), "RS256", kid="k")

    # when the JWT is presented on both HTTP paths and the WebSocket
    responses = [await api_get(token), await buy_ticket(token)]

    # then each refusal says why; the log has one warning line, no traceback
    for response in responses:
        assert response.status_code == 401
        assert error_of(response)["message"] == (
            "The platform's signing keys cannot be fetched right now."
        )
    assert await outcome(await ws(f"token={token}")) == 4001
    warnings = [r for r in caplog.records if r.name == "realtime.jwt_auth"]
    assert warnings and all(r.exc_info is None for r in warnings)


async def test_jwks__unreachable_after_a_fetch__the_known_keys_stay_in_use(jwks, clock):
    key = new_key("ES256")
    jwks.keys = [public_jwk(key, "k", "ES256")]
    await user_with("stale@example.com")
    token = sign(claims_for("stale@example.com"), key, "ES256", kid="k")
    assert (await buy_ticket(token)).status_code == 200

    # when the endpoint goes away and the keys' time is up
    jwks.close()
    clock(700)

    # then the last keys are still used, for up to an hour past their time
    assert (await buy_ticket(token)).status_code == 200
    clock(jwt_auth.JWKS_STALE_MAX)
    refused = await buy_ticket(token)
    assert (
        error_of(refused)["message"] == "The platform's signing keys cannot be fetched right now."
    )


async def test_jwks__a_slow_fetch_never_blocks_the_event_loop(jwks):
    # given a JWKS that takes 0.5 s to answer
    key = new_key("RS256")
    jwks.keys = [public_jwk(key, "k", "RS256")]
    jwks.delay = 0.5
    await user_with("slow@example.com")
    token = sign(claims_for("slow@example.com"), key, "RS256", kid="k")

    # when a connection authenticates while a ticker runs on the loop
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        user = await atoken_authenticate(token)
    finally:
        task.cancel()

    # then the loop kept ticking through the fetch
    assert user.email == "slow@example.com"
    assert ticks >= 10


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "expected"),
    [("", []), ("short", ["wedsync.E003"]), ("x" * 31, ["wedsync.E003"]), ("x" * 32, [])],
)
def test_check_e003__short_hs256_secret(secret: str, expected: list[str]) -> None:
    with override_settings(REALTIME_JWT_SECRET=secret):
        messages = checks.check_jwt_secret()

    assert [m.id for m in messages] == expected
    assert checks.JWT_MIN_SECRET_BYTES == jwt_auth.MIN_SECRET_BYTES


@pytest.mark.parametrize(
    ("url", "debug", "expected"),
    [
        ("", False, []),
        ("https://project.supabase.co/auth/v1/.well-known/jwks.json", False, []),
        ("http://project.supabase.co/auth/v1/.well-known/jwks.json", False, ["wedsync.E004"]),
        ("http://project.supabase.co/auth/v1/.well-known/jwks.json", True, []),
        ("http://127.0.0.1:9999/jwks.json", False, []),
        ("file:///etc/jwks.json", True, ["wedsync.E004"]),
    ],
)
def test_check_e004__jwks_url_must_be_https(url: str, debug: bool, expected: list[str]) -> None:
    with override_settings(REALTIME_JWT_JWKS_URL=url, DEBUG=debug):
        messages = checks.check_jwt_jwks_url()

    assert [m.id for m in messages] == expected


def test_admin__external_identities_are_registered() -> None:
    assert admin.site.is_registered(ExternalIdentity)
    assert get_user_model()._meta.get_field("realtime_external_identities")
