"""``GET /api/scaling/desired``: the latest decision's capacity, for KEDA's metrics-api
scaler (docs/scaling.md has a ``ScaledObject``) or any other poller.

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
from scaling.selectors import latest_decision, scaling_policy


def desired_capacity() -> dict[str, object]:
    """The latest decision's capacity; the policy's minimums before the first one."""
    row = latest_decision()
    if row is None:
        policy = scaling_policy()
        return {
            "asgi": policy.min_asgi,
            "workers": policy.min_workers,
            "connection_limit": policy.min_asgi * policy.connection_limit_per_process,
            "decided_at": None,
        }
    return {
        "asgi": row.asgi_processes,
        "workers": row.celery_workers,
        "connection_limit": row.connection_limit,
        "decided_at": wire_time(row.made_at),
    }


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
    return json_response(desired_capacity())


@csrf_exempt
def desired_view(request: HttpRequest) -> HttpResponse:
    """The desired capacity as JSON: KEDA's token, or a staff user."""
    if request.method != "GET":
        return json_error("method_not_allowed", "use GET", 405)
    if _scaling_token_matches(request):
        return json_response(desired_capacity())
    return _desired_for_staff(request)
