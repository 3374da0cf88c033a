"""``GET /api/scaling/desired``: the latest decision for KEDA, behind a token."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.urls import reverse

from realtime.tokens import token_issue
from scaling.models import ScalingDecision
from tests.factories import make_user

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(20)]

KEDA_TOKEN = "keda-0123456789abcdef"


@pytest.fixture(autouse=True)
def _token(settings):
    settings.SCALING_API_TOKEN = KEDA_TOKEN


def _get(token: str | None = None, method: str = "get"):
    return _get_with_authorization(f"Bearer {token}" if token else None, method)


def _get_with_authorization(authorization: str | None, method: str = "get"):
    """A request whose Authorization header is exactly ``authorization`` (none: no header)."""
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    return getattr(client, method)(reverse("scaling-desired"), **headers)


def _decision(asgi: int, at: dt.datetime) -> ScalingDecision:
    return ScalingDecision.objects.create(
        made_at=at, action="scale_out", asgi_processes=asgi, celery_workers=3,
        connection_limit=asgi * 1500, previous_asgi_processes=2, previous_celery_workers=1,
        previous_connection_limit=3000, reason="test", actuator="log", actuator_status="applied",
    )  # fmt: skip


def test_desired__returns_the_latest_decision_to_the_scaling_token():
    # given
    _decision(4, dt.datetime(2026, 6, 13, 10, 0, tzinfo=dt.UTC))
    _decision(7, dt.datetime(2026, 6, 13, 11, 0, tzinfo=dt.UTC))

    # when
    response = _get(KEDA_TOKEN)

    # then
    assert response.status_code == 200
    assert response.json() == {
        "asgi": 7,
        "workers": 3,
        "connection_limit": 10500,
        "decided_at": "2026-06-13T11:00:00.000Z",
    }


def test_desired__before_any_decision_returns_the_policy_minimums():
    assert _get(KEDA_TOKEN).json() == {
        "asgi": 2,
        "workers": 1,
        "connection_limit": 3000,
        "decided_at": None,
    }


def test_desired__staff_may_use_their_realtime_token():
    staff = make_user(is_staff=True)
    assert _get(token_issue(user=staff)).status_code == 200


def test_desired__a_user_who_is_not_staff_is_forbidden():
    response = _get(token_issue(user=make_user()))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("token", [None, "keda-wrong", KEDA_TOKEN + "x"])
def test_desired__without_valid_credentials_is_401(token):
    response = _get(token)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("authorization", ["Bearer ", "Bearer    ", "Bearer \t"], ids=repr)
def test_desired__an_empty_setting_accepts_no_scaling_token(settings, authorization):
    # given: no scaling token configured, and a bearer header carrying an empty token
    settings.SCALING_API_TOKEN = ""

    # when
    response = _get_with_authorization(authorization)

    # then: an empty token never matches an empty setting
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_desired__only_get():
    response = _get(KEDA_TOKEN, method="post")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
