"""The metrics API (PROTOCOL §9): ``GET``/``POST /api/performance/realtime/metrics``.

Staff only, with the session (CSRF for POST) or a bearer token, like every API endpoint
(``realtime.api.api_view``): anonymous 401, anyone else 403. GET is the dashboard's
data; POST carries one staff action:

* ``{"action": "wedding_day_mode", "enabled": true, "reason": "..."}`` (audited);
* ``{"action": "warm_cache"}``: queue the cache warming task (202);
* ``{"action": "acknowledge_alert", "alert_id": 7}`` or ``"resolve_alert"``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse

from core.http import ApiError, json_body, json_response
from realtime.api import api_view
from realtime.errors import RealtimeError
from scaling.selectors import wedding_day_mode
from scaling.services import wedding_day_mode_set
from scaling.tasks import warm_cache

from . import selectors, services
from .models import Alert

ACTIONS = ("wedding_day_mode", "warm_cache", "acknowledge_alert", "resolve_alert")
# A staff action is a few fields; anything bigger is not one.
MAX_BODY = 4096


def _staff(request: HttpRequest) -> None:
    if not request.user.is_staff:
        raise ApiError("forbidden", "staff only", 403)


def _invalid(field: str, message: str) -> RealtimeError:
    return RealtimeError("invalid_payload", message, field=field)


def _only(data: dict[str, Any], *allowed: str) -> None:
    unknown = sorted(set(data) - {"action", *allowed})
    if unknown:
        raise _invalid(unknown[0], f"unknown field {unknown[0]!r}")


@api_view("GET", "POST")
def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET: figures, history, alerts, today's weddings (while the database is unreachable,
    the last ones read, marked ``stale_since``). POST: one staff action."""
    _staff(request)
    if request.method == "POST":
        return _action(request, json_body(request, MAX_BODY))
    raw = request.GET.get("minutes", str(selectors.HISTORY_MINUTES))
    if not raw.isdigit() or int(raw) not in selectors.MINUTE_CHOICES:
        choices = ", ".join(map(str, selectors.MINUTE_CHOICES))
        raise ApiError("bad_request", f"minutes must be one of {choices}", 400)
    try:
        # Beat's heartbeat is checked from here too: when beat is down nothing in Celery runs.
        services.beat_check()
        return json_response(selectors.metrics_overview(minutes=int(raw)))
    except DatabaseError:
        # The last figures, marked stale, rather than a dark dashboard during the outage.
        stale = selectors.metrics_overview_stale(minutes=int(raw))
        if stale is None:
            raise
        response = json_response(stale)
        response["X-WedSync-Stale-Since"] = stale["stale_since"]
        return response


def _action(request: HttpRequest, data: dict[str, Any]) -> HttpResponse:
    action = data.get("action")
    if action not in ACTIONS:
        raise _invalid("action", f"action must be one of {', '.join(ACTIONS)}")
    if action == "wedding_day_mode":
        _only(data, "enabled", "reason")
        try:
            wedding_day_mode_set(
                enabled=data.get("enabled"), reason=data.get("reason"), user=request.user
            )
        except ValidationError as exc:
            field, messages = next(iter(exc.message_dict.items()))
            raise _invalid(field, f"{field}: {messages[0]}") from None
        selectors.metrics_overview_invalidate()
        return json_response({"status": "ok", "wedding_day_mode": wedding_day_mode()})
    if action == "warm_cache":
        _only(data)
        try:
            result = warm_cache.delay()
        except Exception:  # the broker is unreachable
            raise ApiError("unavailable", "the task queue is not reachable", 503) from None
        return json_response({"status": "queued", "task_id": result.id}, 202)
    _only(data, "alert_id")
    alert_id = data.get("alert_id")
    if isinstance(alert_id, bool) or not isinstance(alert_id, int) or alert_id < 1:
        raise _invalid("alert_id", "alert_id must be a positive integer")
    service = (
        services.alert_acknowledge if action == "acknowledge_alert" else services.alert_resolve
    )
    try:
        alert = service(alert_id=alert_id, user=request.user)
    except Alert.DoesNotExist:
        raise ApiError("not_found", f"no alert {alert_id}", 404) from None
    selectors.metrics_overview_invalidate()
    return json_response({"status": "ok", "alert": selectors.alert_as_dict(alert)})
