"""Realtime tokens (PROTOCOL §2) and the issue_token command (§10)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.core import signing
from django.core.management import CommandError, call_command
from django.db import connection

from realtime import tokens
from realtime.tokens import (
    TokenError,
    TokenExpired,
    TokenInvalid,
    TokenUserInactive,
    atoken_authenticate,
    token_authenticate,
    token_expires_at,
    token_issue,
)
from tests.factories import make_user

pytestmark = pytest.mark.django_db

NOW = 1_800_000_000.0  # a fixed clock for the expiry tests (January 2027)


@pytest.fixture
def user():
    return make_user(username="alice")


@pytest.fixture
def clock(monkeypatch):
    """Sets the clock tokens read; returns the setter."""

    def set_to(moment: float) -> None:
        monkeypatch.setattr(tokens, "_now", lambda: moment)

    set_to(NOW)
    return set_to


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _flip(text: str, index: int) -> str:
    replacement = "B" if text[index] != "B" else "C"
    return text[:index] + replacement + text[index + 1 :]


# --- issue and authenticate -------------------------------------------------------------


def test_token__authenticates_its_user(user):
    token = token_issue(user=user)

    assert token_authenticate(token) == user


def test_token__is_compact_and_url_safe(user):
    token = token_issue(user=user, ttl=settings.REALTIME_TOKEN_MAX_TTL)

    assert len(token) <= 128
    assert urllib.parse.quote(token, safe="") == token


def test_token__names_only_its_own_user(user):
    # given two users with a token each
    bob = make_user(username="bob")

    # when / then
    assert token_authenticate(token_issue(user=user)) == user
    assert token_authenticate(token_issue(user=bob)) == bob


def test_token__default_lifetime_comes_from_settings(user, clock, settings):
    settings.REALTIME_TOKEN_TTL = 120

    token = token_issue(user=user)

    assert token_expires_at(token) == NOW + 120


def test_token__lives_at_least_its_ttl_on_a_fractional_clock(user, clock):
    clock(NOW + 0.75)

    token = token_issue(user=user, ttl=1)

    clock(NOW + 1.74)
    assert token_authenticate(token) == user


# --- expiry -----------------------------------------------------------------------------


def test_token__valid_until_the_last_second_of_its_ttl(user, clock):
    # given a token issued now for 60 s
    token = token_issue(user=user, ttl=60)

    # when 59.9 s have passed, then it still works
    clock(NOW + 59.9)
    assert token_authenticate(token) == user


def test_token__expired_after_its_ttl(user, clock):
    # given a token that lives one second
    token = token_issue(user=user, ttl=1)

    # when one second has passed
    clock(NOW + 1)

    # then
    with pytest.raises(TokenExpired) as refused:
        token_authenticate(token)
    assert refused.value.code == "token_expired"
    assert isinstance(refused.value, TokenError)


def test_token__expired_long_ago_is_expired(user, clock):
    token = token_issue(user=user, ttl=3600)

    clock(NOW + 86400 * 365)

    with pytest.raises(TokenExpired):
        token_authenticate(token)


def test_token__expiry_is_not_trusted_from_an_altered_payload(user, clock):
    # given an expired token whose payload is rewritten to expire much later
    token = token_issue(user=user, ttl=1)
    payload, signature = token.split(".")
    claims = json.loads(_unb64(payload))
    claims["e"] += 86400
    forged = _b64(json.dumps(claims, separators=(",", ":")).encode()) + "." + signature
    clock(NOW + 2)

    # when / then
    with pytest.raises(TokenInvalid):
        token_authenticate(forged)


# --- tampering and garbage --------------------------------------------------------------


@pytest.mark.parametrize("part", ["payload", "signature"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_token__tampered_is_rejected(user, part, where):
    # given a valid token with one character changed
    payload, signature = token_issue(user=user).split(".")
    text = payload if part == "payload" else signature
    index = {"first": 0, "middle": len(text) // 2, "last": len(text) - 1}[where]
    changed = _flip(text, index)
    tampered = f"{changed}.{signature}" if part == "payload" else f"{payload}.{changed}"

    # when / then
    with pytest.raises(TokenInvalid) as refused:
        token_authenticate(tampered)
    assert refused.value.code == "token_invalid"


def test_token__payload_moved_to_another_user_is_rejected(user):
    # given bob, and alice's token rewritten to name bob with alice's signature
    bob = make_user(username="bob")
    payload, signature = token_issue(user=user).split(".")
    claims = json.loads(_unb64(payload))
    claims["u"] = bob.pk
    claims["f"] = bob.get_session_auth_hash()[:12]
    forged = _b64(json.dumps(claims, separators=(",", ":")).encode()) + "." + signature

    # when / then
    with pytest.raises(TokenInvalid):
        token_authenticate(forged)


def test_token__signed_with_another_salt_is_rejected(user):
    # given the same claims signed by another part of the site (another salt, or none)
    payload = token_issue(user=user).split(".")[0]
    claims = json.loads(_unb64(payload))
    other_salt = signing.Signer(salt="django.contrib.sessions", sep=".").sign_object(claims)
    no_salt = signing.Signer(sep=".").sign_object(claims)

    # when / then
    for token in (other_salt, no_salt):
        with pytest.raises(TokenInvalid):
            token_authenticate(token)


def test_token__signed_with_another_secret_key_is_rejected(user, settings):
    token = token_issue(user=user)

    settings.SECRET_KEY = "another-secret-key-of-a-different-deployment"

    with pytest.raises(TokenInvalid):
        token_authenticate(token)


def test_token__signed_with_a_fallback_secret_key_still_works(user, settings):
    # given a token issued before SECRET_KEY was rotated
    token = token_issue(user=user)
    old_key = settings.SECRET_KEY

    # when the key rotates and the old one becomes a fallback
    settings.SECRET_KEY = "the-new-secret-key-after-rotation-0123456789"
    settings.SECRET_KEY_FALLBACKS = [old_key]

    # then
    assert token_authenticate(token) == user


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        " ",
        "x",
        ".",
        "..",
        "abc.def",
        "abc.def.ghi",
        "eyJ1IjoxfQ.",
        ".c2lnbmF0dXJl",
        "a" * 10_000,
        "a" * 300 + "." + "b" * 43,
        "é.ü",
        "\x00",
        "\ud800.\ud800",
        "Bearer abc.def",
        "eyJ1IjoxfQ%2Eabc",
    ],
)
def test_token__garbage_is_invalid(garbage):
    with pytest.raises(TokenInvalid):
        token_authenticate(garbage)


@pytest.mark.parametrize("not_a_string", [None, 123, b"abc.def", ["abc.def"]])
def test_token__non_string_is_invalid(not_a_string):
    with pytest.raises(TokenInvalid):
        token_authenticate(not_a_string)


@pytest.mark.parametrize(
    "claims",
    [
        [1, 2, 3],
        "just a string",
        {"u": 1, "e": 4_000_000_000},
        {"u": 1, "e": 4_000_000_000, "f": "x", "extra": 1},
        {"u": True, "e": 4_000_000_000, "f": "x"},
        {"u": 1, "e": "4000000000", "f": "x"},
        {"u": 1, "e": 4_000_000_000, "f": 7},
        {"u": "not-a-number", "e": 4_000_000_000, "f": "x"},
        {"u": 987_654_321, "e": 4_000_000_000, "f": "x"},
    ],
)
def test_token__well_signed_but_malformed_claims_are_invalid(claims):
    # signed with our own key and salt, so only the claim checks can refuse it
    token = tokens._signer().sign_object(claims)

    with pytest.raises(TokenInvalid):
        token_authenticate(token)


# --- revocation -------------------------------------------------------------------------


def test_token__deactivated_user_is_refused(user):
    # given a token, then the user is deactivated
    token = token_issue(user=user)
    user.is_active = False
    user.save()

    # when / then
    with pytest.raises(TokenUserInactive) as refused:
        token_authenticate(token)
    assert refused.value.code == "user_inactive"


def test_token__reactivated_user_is_accepted_again(user):
    token = token_issue(user=user)
    user.is_active = False
    user.save()
    user.is_active = True
    user.save()

    assert token_authenticate(token) == user


def test_token__password_change_revokes_it(user):
    # given a token, then the user's password changes
    token = token_issue(user=user)
    user.set_password("a completely new password")
    user.save()

    # when / then
    with pytest.raises(TokenInvalid):
        token_authenticate(token)


def test_token__other_profile_changes_keep_it(user):
    token = token_issue(user=user)
    user.email = "alice@example.com"
    user.first_name = "Alice"
    user.save()

    assert token_authenticate(token) == user


def test_token__deleted_user_is_refused(user):
    token = token_issue(user=user)
    user.delete()

    with pytest.raises(TokenInvalid):
        token_authenticate(token)


# --- lifetime bounds --------------------------------------------------------------------


def test_token_issue__accepts_ttl_bounds(user, clock, settings):
    settings.REALTIME_TOKEN_MAX_TTL = 600

    assert token_expires_at(token_issue(user=user, ttl=1)) == NOW + 1
    assert token_expires_at(token_issue(user=user, ttl=600)) == NOW + 600


@pytest.mark.parametrize("ttl", [0, -1, 601, 10**12, 1.5, "60", True])
def test_token_issue__rejects_ttl_out_of_bounds(user, settings, ttl):
    settings.REALTIME_TOKEN_MAX_TTL = 600

    with pytest.raises(ValueError, match="lifetime"):
        token_issue(user=user, ttl=ttl)


def test_token_issue__refuses_an_inactive_user(user):
    user.is_active = False
    user.save()

    with pytest.raises(ValueError, match="inactive"):
        token_issue(user=user)


def test_token_issue__refuses_an_unsaved_user():
    from django.contrib.auth import get_user_model

    with pytest.raises(ValueError, match="not saved"):
        token_issue(user=get_user_model()(username="ghost"))


# --- async ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_atoken_authenticate__resolves_the_user_in_async_code():
    # given
    user = await database_sync_to_async(make_user)(username="carol")
    token = await database_sync_to_async(token_issue)(user=user)

    # when / then
    assert (await atoken_authenticate(token)).pk == user.pk
    with pytest.raises(TokenInvalid):
        await atoken_authenticate(token + "x")


# --- issue_token command ----------------------------------------------------------------


def _issue_token(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("issue_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_issue_token__prints_a_token_that_authenticates_on_its_last_line(user):
    out, err = _issue_token("alice")

    last_line = out.rstrip("\n").splitlines()[-1]
    assert token_authenticate(last_line) == user
    assert "alice" in err


def test_issue_token__honours_ttl(user, clock):
    out, err = _issue_token("alice", "--ttl", "120")

    token = out.rstrip("\n").splitlines()[-1]
    assert token_expires_at(token) == NOW + 120
    assert "2027-01-15 08:02:00 UTC" in err


def test_issue_token__unknown_user_is_a_command_error():
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        _issue_token("nobody")


def test_issue_token__inactive_user_is_a_command_error(user):
    user.is_active = False
    user.save()

    with pytest.raises(CommandError, match="inactive"):
        _issue_token("alice")


@pytest.mark.parametrize("ttl", ["0", "-5", str(10**9), "soon"])
def test_issue_token__bad_ttl_is_a_command_error(user, ttl):
    with pytest.raises(CommandError):
        _issue_token("alice", "--ttl", ttl)


def _database_url() -> str | None:
    """The URL of the test database, for a manage.py subprocess."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    if db["ENGINE"] == "django.db.backends.postgresql":
        password = f":{urllib.parse.quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
        host = db.get("HOST") or "127.0.0.1"
        port = db.get("PORT") or 5432
        return f"postgres://{urllib.parse.quote(db['USER'])}{password}@{host}:{port}/{db['NAME']}"
    return None


@pytest.mark.django_db(transaction=True)
def test_issue_token__from_the_shell_prints_token_last_and_fails_cleanly():
    # given a user committed to the test database a subprocess can reach
    make_user(username="dave")
    url = _database_url()
    if url is None:
        pytest.skip(f"no URL for {connection.settings_dict['ENGINE']}")
    env = {**os.environ, "DATABASE_URL": url}
    manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "issue_token"]

    # when
    ok = subprocess.run([*manage, "dave"], env=env, capture_output=True, text=True, timeout=30)
    unknown = subprocess.run(
        [*manage, "nobody"], env=env, capture_output=True, text=True, timeout=30
    )

    # then the token is stdout's last line; an unknown user exits 1 without a traceback
    assert ok.returncode == 0, ok.stderr
    assert token_authenticate(ok.stdout.splitlines()[-1]).get_username() == "dave"
    assert unknown.returncode == 1
    assert "No user named 'nobody'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert unknown.stdout == ""
