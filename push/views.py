"""HTTP API of Web Push (docs/web.md, "Push"): the public key, a browser's subscription
registered and removed (the session with CSRF, as the page's other writes, or a realtime
token), and the "I've seen it" of a notification, authenticated by its own token."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from core.http import API_ERRORS, ApiError, error_response, json_body, json_error, json_response
from realtime.api import api_view

from . import conf, services

# A subscription's JSON (PushSubscription.toJSON()) is well under this.
MAX_SUBSCRIPTION_BODY = 4096


@api_view("GET")
def key_view(request: HttpRequest) -> HttpResponse:
    """GET: whether push is on, and the key the page subscribes with."""
    public_key = settings.WEB_PUSH_VAPID_PUBLIC_KEY if conf.enabled() else None
    return json_response({"enabled": conf.enabled(), "public_key": public_key})


def _invalid(exc: services.InvalidSubscription) -> ApiError:
    return ApiError("invalid_subscription", str(exc), 400, field=exc.field)


@api_view("POST", "DELETE")
def subscriptions_view(request: HttpRequest) -> HttpResponse:
    """POST: register this browser's subscription ``{endpoint, keys: {p256dh, auth}}``
    for the signed-in user. DELETE: remove it (``{endpoint}``)."""
    data = json_body(request, MAX_SUBSCRIPTION_BODY)
    try:
        if request.method == "DELETE":
            removed = services.subscription_unregister(
                user=request.user, endpoint=data.get("endpoint")
            )
            return json_response({"removed": removed})
        if not conf.enabled():
            raise ApiError("push_disabled", "push notifications are not configured", 409)
        keys = data.get("keys")
        if not isinstance(keys, dict):
            raise services.InvalidSubscription("keys", "must be an object {p256dh, auth}")
        subscription, created = services.subscription_register(
            user=request.user,
            endpoint=data.get("endpoint"),
            p256dh=keys.get("p256dh"),
            auth=keys.get("auth"),
            user_agent=request.headers.get("User-Agent", ""),
        )
    except services.InvalidSubscription as exc:
        raise _invalid(exc) from exc
    return json_response({"id": subscription.pk, "created": created}, 201 if created else 200)


@csrf_exempt  # the token in the body is the credential (a service worker has no cookie)
def ack_view(request: HttpRequest) -> HttpResponse:
    """POST ``{token}``: the ack a notification's "I've seen it" stands for."""
    if request.method != "POST":
        return json_error("method_not_allowed", "use POST", 405)
    try:
        data = json_body(request, 1024)
        try:
            result = services.ack_by_token(token=data.get("token"))
        except services.AckTokenInvalid as exc:
            raise ApiError("unauthenticated", str(exc), 401) from exc
    except API_ERRORS as exc:
        return error_response(exc)
    return json_response(
        {"topic": result.event.topic, "seq": result.event.seq, "created": result.created}
    )
