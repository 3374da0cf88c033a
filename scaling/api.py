"""``GET /api/scaling/desired``: the latest decision's capacity, for KEDA's metrics-api
scaler (docs/scaling.md has a ``ScaledObject``) or any other poller. With
``?include=reservations``, also the minimums in force and the capacity reservations
planned or active (ADR 0033); without it the body KEDA polls every few seconds stays the
four figures and costs no more queries.

Accepted: ``Authorization: Bearer <SCALING_API_TOKEN>`` (compared in constant time), or
a staff user by session or realtime token (``realtime.api.api_view``). Errors are the
API's JSON errors: 401 without valid credentials, 403 for a user who is not staff.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from core.http import ApiError, json_error, json_response
from core.wire import wire_time
from realtime.api import api_view
from scaling.models import CapacityReservation
from scaling.selectors import (
    latest_decision,
    reservation_payload,
    reserved_minimums,
    scaling_policy,
    upcoming_reservations,
)


def desired_capacity(*, reservations: bool = False) -> dict[str, object]:
    """The latest decision's capacity (the policy's minimums before the first one); with
    ``reservations``, the minimums in force and the reservations planned or active."""
    row = latest_decision()
    policy = scaling_policy()
    if row is None:
        body: dict[str, object] = {
            "asgi": policy.min_asgi,
            "workers": policy.min_workers,
            "connection_limit": policy.min_asgi * policy.connection_limit_per_process,
            "decided_at": None,
        }
    else:
        body = {
            "asgi": row.asgi_processes,
            "workers": row.celery_workers,
            "connection_limit": row.connection_limit,
            "decided_at": wire_time(row.made_at),
        }
    if reservations:
        min_asgi, min_workers = reserved_minimums(policy=policy)
        body["minimum"] = {"asgi": min_asgi, "workers": min_workers}
        body["reserved"] = [_reservation(r) for r in upcoming_reservations()]
    return body


def _include(request: HttpRequest) -> bool:
    """Whether ``?include=reservations`` was asked for; any other value is a 400."""
    values = request.GET.getlist("include")
    if any(v != "reservations" for v in values):
        raise ApiError("bad_request", "include: the only value accepted is 'reservations'", 400)
    return bool(values)


_TIMES = ("peak_at", "starts_at", "ends_at", "made_at", "updated_at", "forecast_made_at")


def _reservation(row: CapacityReservation) -> dict[str, object]:
    body = reservation_payload(row)
    return {**body, **{k: wire_time(body[k]) for k in _TIMES}}


def _scaling_token_matches(request: HttpRequest) -> bool:
    expected = settings.SCALING_API_TOKEN
    header = request.headers.get("Authorization", "")
    if not expected or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), expected.encode())


@api_view("GET")
def _desired_for_staff(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise ApiError("forbidden", "staff only", 403)
    return json_response(desired_capacity(reservations=_include(request)))


@csrf_exempt
def desired_view(request: HttpRequest) -> HttpResponse:
    """The desired capacity as JSON: KEDA's token, or a staff user."""
    if request.method != "GET":
        return json_error("method_not_allowed", "use GET", 405)
    if _scaling_token_matches(request):
        try:
            return json_response(desired_capacity(reservations=_include(request)))
        except ApiError as exc:
            return json_error(exc.code, exc.message, exc.status)
    return _desired_for_staff(request)
