"""Sign-in throttling (django-axes; docs/security.md): repeated wrong passwords for one
username from one address lock that pair out, on the web app's form and the admin's."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from tests.factories import make_user

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(30)]

PASSWORD = "the right one"


def _user(**kwargs: Any) -> Any:
    user = make_user(**kwargs)
    user.set_password(PASSWORD)
    user.save(update_fields=["password"])
    return user


def _sign_in(username: str, password: str, *, ip: str = "203.0.113.7", path: str = "") -> Any:
    return Client(REMOTE_ADDR=ip).post(
        path or reverse("web:login"), {"username": username, "password": password}
    )


def _signed_in(response: Any) -> bool:
    return "_auth_user_id" in response.client.session


def test_settings__axes_first_and_the_cached_backend_kept() -> None:
    assert settings.AUTHENTICATION_BACKENDS == [
        "axes.backends.AxesStandaloneBackend",
        "wedsync.auth_backends.CachedModelBackend",
    ]
    assert settings.MIDDLEWARE[-1] == "axes.middleware.AxesMiddleware"
    assert settings.AXES_ENABLED and settings.AXES_FAILURE_LIMIT == 5


def test_sign_in__five_wrong_passwords_lock_out_even_the_right_one() -> None:
    # given
    user = _user()

    # when: 4 wrong passwords, the form answers as usual
    for _ in range(4):
        response = _sign_in(user.username, "wrong")
        assert response.status_code == 200 and not _signed_in(response)
    # the 5th locks the username from this address
    assert _sign_in(user.username, "wrong").status_code == 429

    # then: the right password is refused too
    response = _sign_in(user.username, PASSWORD)
    assert response.status_code == 429
    assert not _signed_in(response)


def test_sign_in__a_lockout_leaves_other_users_and_other_addresses_alone() -> None:
    # given: one user locked out from one address
    victim, other = _user(), _user()
    for _ in range(5):
        _sign_in(victim.username, "wrong")

    # then: another user from the same address signs in
    response = _sign_in(other.username, PASSWORD)
    assert response.status_code == 302 and _signed_in(response)
    # and the same user from another address (username AND address are locked together)
    response = _sign_in(victim.username, PASSWORD, ip="198.51.100.9")
    assert response.status_code == 302 and _signed_in(response)


def test_sign_in__fewer_failures_then_the_right_password_signs_in_and_resets() -> None:
    user = _user()
    for _ in range(4):
        _sign_in(user.username, "wrong")

    assert _sign_in(user.username, PASSWORD).status_code == 302
    # the failures were forgotten: four more wrong ones do not lock out
    for _ in range(4):
        _sign_in(user.username, "wrong")
    assert _sign_in(user.username, PASSWORD).status_code == 302


def test_admin_sign_in__is_throttled_too() -> None:
    staff = _user(is_staff=True)
    path = reverse("admin:login")
    for _ in range(5):
        _sign_in(staff.username, "wrong", path=path)

    response = _sign_in(staff.username, PASSWORD, path=path)

    assert response.status_code == 429
    assert not _signed_in(response)


def test_force_login__still_works_for_the_test_suite() -> None:
    user = _user()
    client = Client()
    client.force_login(user)
    assert client.get("/").status_code == 200
