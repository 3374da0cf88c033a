"""HTTP API of PROTOCOL §9 (rows 1 to 5): token, weddings, snapshot, history, publish; the
connect ticket (v1.1); and the staff view of open connections.

Every endpoint accepts the Django session (with CSRF for writes) or a token as
``Authorization: Bearer <token>``; the publish, the history and the snapshot also accept
an API key of the platform's backend there (``realtime.api_keys``, ADR 0024). Errors are
JSON ``{"error": {"code", "message"}}``; a wedding that does not exist and one the user
may not see get the same 404.
"""

from __future__ import annotations

import re
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from core import switches
from core.cache import get_cache
from core.db import database_reachable, in_db_thread
from core.http import (
    ApiError,
    api_views,
    csrf_rejection,
    json_body,
    json_error,
    json_response,
)
from weddings import selectors as domain
from weddings.caching import aguest_view_for, auser_access
from weddings.models import Supplier, Wedding

from . import api_keys, catalogue, selectors, services
from .access import plan_only_on, snapshot_view
from .connection_counts import get_connection_counter, supplier_limit
from .epoch import aepoch_current, epoch_current
from .errors import RealtimeError, topic_forbidden
from .limits import get_user_limits
from .protocol import EPOCH_PATTERN, MAX_EPOCH_CHARS, MAX_FRAME_BYTES, event_frame, plan_view_frame
from .snapshots import (
    snapshot_contacts,
    snapshot_current,
    snapshot_key,
    snapshot_load,
    wedding_summary,
)
from .tickets import TicketUnavailable, ticket_issue
from .tokens import (
    TokenError,
    atoken_authenticate,
    token_authenticate,
    token_expires_at,
    token_issue,
)
from .topics import authorize_subscribe

# Longest history page a client may ask for.
MAX_PAGE = 1000


def api_authenticate(request: HttpRequest) -> HttpResponse | None:
    """Set ``request.user`` from a bearer token, or keep the session user (with the CSRF
    check for writes); the JSON error response when neither will do, else None."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and api_keys.is_api_key(header[7:].strip()):
        return api_keys.request_authenticate(request, header[7:].strip())
    if header.startswith("Bearer "):
        try:
            request.user = token_authenticate(header[7:].strip())
        except TokenError as exc:
            return json_error("unauthenticated", str(exc), 401)
    elif not request.user.is_authenticated:
        return json_error("unauthenticated", "log in or send a bearer token", 401)
    elif request.method not in ("GET", "HEAD") and csrf_rejection(request):
        return json_error("csrf_failed", "CSRF token missing or wrong", 403)
    return None


async def aapi_authenticate(request: HttpRequest) -> HttpResponse | None:
    """``api_authenticate`` for async views: a bearer token on the event loop (its user
    comes from the cache), a session in a realtime database thread."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return await in_db_thread(api_authenticate)(request)
    if api_keys.is_api_key(header[7:].strip()):
        return await api_keys.arequest_authenticate(request, header[7:].strip())
    try:
        request.user = await atoken_authenticate(header[7:].strip())
    except TokenError as exc:
        return json_error("unauthenticated", str(exc), 401)
    return None


# The decorators of every JSON API view (realtime's, monitoring's, scaling's, the web
# app's): a session (CSRF for writes) or a realtime bearer token.
api_view, async_api_view = api_views(api_authenticate, aapi_authenticate)


def _visible_topic(request: HttpRequest, wedding_id: int) -> str:
    """The wedding's topic when the request may read it; 404 ``not_found`` alike for a
    hidden, a missing and an impossible wedding id, and one outside an API key's scope.

    A user is checked with the rule of a subscribe to the topic, from the cached access
    (``authorize_subscribe(..., cached=True)``; ADR 0012, ADR 0039): the history is the
    replay a subscribe with ``since`` would give, and a publish is authorised again
    against the database by ``event_publish``. A refused request (a flood over its
    budget) so costs no query. An API key's service user is staff of the matrix in memory
    only (``api_keys._acting``), so a key is checked against the database, within its
    scope.
    """
    topic = f"wedding:{wedding_id}"
    key = api_keys.request_key(request)
    try:
        if key is None:
            authorize_subscribe(request.user, topic, cached=True)
        elif not (
            key.covers_wedding(wedding_id)
            and domain.weddings_visible_to(request.user).filter(pk=wedding_id).exists()
        ):
            raise topic_forbidden(topic)
    except RealtimeError:
        raise ApiError("not_found", topic_forbidden(topic).message, 404) from None
    return topic


@api_view("POST")
def token_view(request: HttpRequest) -> HttpResponse:
    """A realtime token for the signed-in user (PROTOCOL §2).

    Asked for with a bearer token, the new token expires no later than that one (a
    session-authenticated request gets the full ``ttl``): a token cannot renew itself
    for ever, and a stolen one cannot be turned into a longer-lived one.
    """
    data = json_body(request, MAX_FRAME_BYTES)
    # Per user (REALTIME_TOKEN_ISSUE_PER_MINUTE): 429 rate_limited with retry_after_ms.
    async_to_sync(get_user_limits().check_token_issue)(request.user.pk)
    header = request.headers.get("Authorization", "")
    # api_authenticate has accepted this bearer token, so it has a valid expiry.
    not_after = token_expires_at(header[7:].strip()) if header.startswith("Bearer ") else None
    try:
        token = token_issue(user=request.user, ttl=data.get("ttl"), not_after=not_after)
    except (TypeError, ValueError) as exc:
        raise ApiError("bad_request", str(exc), 400) from None
    return json_response({"token": token, "expires_at": token_expires_at(token)})


@async_api_view("POST")
async def ticket_view(request: HttpRequest) -> HttpResponse:
    """A single-use connect ticket for the signed-in user (PROTOCOL §2, v1.1), for
    ``/ws/realtime/?ticket=``: what a client sends in the handshake URL instead of its
    long-lived token.

    It takes from the same per-user budget as token issues (429 ``rate_limited``); bought
    with a bearer token, it expires no later than that token. The body is ignored. The
    answer is a credential: ``Cache-Control: no-store``.
    """
    await get_user_limits().check_token_issue(request.user.pk)
    header = request.headers.get("Authorization", "")
    # aapi_authenticate has accepted this bearer token, so it has a valid expiry.
    not_after = token_expires_at(header[7:].strip()) if header.startswith("Bearer ") else None
    try:
        ticket, expires_in = await ticket_issue(user=request.user, not_after=not_after)
    except TicketUnavailable as exc:
        raise RealtimeError("unavailable", str(exc)) from None
    response = json_response({"ticket": ticket, "expires_in": expires_in})
    response["Cache-Control"] = "no-store"
    return response


@api_view("GET")
def weddings_view(request: HttpRequest) -> HttpResponse:
    """The weddings the user may see."""
    weddings = domain.weddings_visible_to(request.user).order_by("date", "ceremony_time", "id")
    return json_response({"weddings": [wedding_summary(w) for w in weddings]})


@async_api_view("GET")
@api_keys.aaudited
async def wedding_view(request: HttpRequest, wedding_id: int) -> HttpResponse:
    """The wedding snapshot with the topic seq it includes and (v1.1) the stream epoch
    that seq counts in (PROTOCOL §9).

    Visibility is checked on every request with the rule of a subscribe to the
    wedding's topic, from the user's cached access (``realtime.topics``, ``cached=True``;
    docs/adr/0012-lean-api-path.md): the snapshot shows no more than that subscription's
    replay would. The access, the user of a token and the snapshot come from the cache
    on the event loop: a warm read needs no thread and no query. Anything not cached
    loads in a database thread; while the database is unreachable that is a 503, and a
    read served wholly from the cache is marked read-only.
    """
    key = api_keys.request_key(request)
    visible = key.covers_wedding(wedding_id) if key else None
    if not (visible or (key is None and await _may_read_wedding(request.user, wedding_id))):
        raise ApiError("not_found", topic_forbidden(f"wedding:{wedding_id}").message, 404)
    if key is not None:
        api_keys.require(key, "read")
    # The user's snapshot budget (PROTOCOL §8): 429 rate_limited over it.
    await get_user_limits().check_frame("snapshot", request.user.pk)
    state = await _snapshot_aget(wedding_id)
    if state is None:  # no such wedding (staff), or deleted since the access was cached
        raise ApiError("not_found", topic_forbidden(f"wedding:{wedding_id}").message, 404)
    user_id: int | None = None  # an API key: staff's view, as the key's history
    mine: Any = ()
    if key is not None:
        staff = True
        response_body = snapshot_view(state, staff=True, supplier_ids=())
    else:
        access = await auser_access(request.user.pk)
        staff = bool(request.user.is_staff and access["staff"])
        user_id, mine = request.user.pk, access["suppliers"]
        state = snapshot_contacts(state, staff=staff, supplier_ids=mine)  # read.contacts
        response_body = snapshot_view(state, staff=staff, supplier_ids=mine)
    # The reader's part of the guests (ADR 0026, the matrix's guests.* rows), from a cache
    # entry of its own: a guest edit leaves the snapshot alone. None: nothing of them.
    guests = await aguest_view_for(
        user_id=user_id, wedding_id=wedding_id, staff=staff, supplier_ids=mine,
        booked=state["suppliers"],
    )  # fmt: skip
    if guests is not None:
        response_body = {**response_body, "guests": guests}
    response = json_response(response_body)
    if not await database_reachable():
        response["X-WedSync-Read-Only"] = "database unreachable; served from the cache"
    return response


async def _may_read_wedding(user: Any, wedding_id: int) -> bool:
    """The cached subscribe check of a wedding topic (``realtime.topics``
    ``_may_subscribe_cached``) on the event loop. Both the user and the cached row must say
    active (and staff). Staff may read any wedding: one that does not exist has no
    snapshot (404), so unlike the subscribe check this needs no query."""
    access = await auser_access(user.pk)  # DatabaseError (503) when not cached and down
    if not (user.is_active and access["active"]):
        return False
    if user.is_staff and access["staff"]:
        return True
    return wedding_id in access["weddings"]


async def _snapshot_aget(wedding_id: int) -> dict[str, Any] | None:
    """``snapshots.snapshot_get`` on the event loop: a cache hit needs no thread; a miss
    loads in a database thread (DatabaseError, 503, while the database is unreachable).
    A snapshot of another stream epoch is loaded again (``snapshots.snapshot_current``)."""
    key, cache = snapshot_key(wedding_id), get_cache()

    def load() -> Any:
        return in_db_thread(snapshot_load)(wedding_id)

    state = await cache.aget_or_load(key, load, lock=True)
    if snapshot_current(state, await aepoch_current()):
        return state
    await cache.adelete(key)
    return await cache.aget_or_load(key, load, lock=True)


def _epoch_param(request: HttpRequest) -> str | None:
    """The ``epoch`` of a history request (v1.1): what the subscribe frame accepts."""
    raw = request.GET.get("epoch")
    if raw is not None and not (
        0 < len(raw) <= MAX_EPOCH_CHARS and re.match(EPOCH_PATTERN, raw) is not None
    ):
        raise ApiError(
            "bad_request", f"epoch must be 1 to {MAX_EPOCH_CHARS} characters of 0-9A-Za-z_-", 400
        )
    return raw


def _int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    raw = request.GET.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError("bad_request", f"{name} must be an integer", 400) from None
    if not low <= value <= high:
        raise ApiError("bad_request", f"{name} must be between {low} and {high}", 400)
    return value


@api_view("GET", "POST")
@api_keys.audited
def events_view(request: HttpRequest, wedding_id: int) -> HttpResponse:
    """GET: history after ``since`` (the HTTP fallback for gaps). POST: publish.

    The history carries the stream epoch (v1.1) and takes one as ``epoch``: a ``since`` of
    another epoch counts in another history, so it is not recovered and gets no events,
    as on a subscribe. Without ``epoch`` the ``since`` is taken as it is (v1)."""
    if request.method == "POST":
        return _publish(request, wedding_id)
    topic = _visible_topic(request, wedding_id)
    if (key := api_keys.request_key(request)) is not None:
        api_keys.require(key, "read")
    since = _int_param(request, "since", 0, 0, 2**62)
    limit = _int_param(request, "limit", 100, 1, MAX_PAGE)
    told = _epoch_param(request)
    epoch = epoch_current()
    seq = selectors.topic_seq(topic)
    recovered = told in (None, epoch) and since <= seq and selectors.replay_covers(topic, since)
    # The same per-user replay budget as a subscribe with ``since`` (PROTOCOL §8): paging
    # through the history is a replay too. 429 ``rate_limited`` over it. A budget that
    # cannot pay for the page (the log is gapless: min(limit, seq - since) events) is
    # refused before the page is read.
    limits = get_user_limits()
    if recovered:
        page = min(limit, seq - since)
        async_to_sync(limits.check_frame_spent)("replay", request.user.pk, page)
    events = selectors.events_since(topic, since, limit=limit) if recovered else []
    view = plan_view_frame if plan_only_on(request.user, wedding_id) else None  # the couple
    async_to_sync(limits.check_frame)("replay", request.user.pk, len(events))
    last = events[-1].seq if events else since
    return json_response(
        {
            "topic": topic,
            "seq": seq,
            "epoch": epoch,
            "recovered": recovered,
            "events": [view(event_frame(e)) if view else event_frame(e) for e in events],
            "next_since": last if recovered and last < seq else None,
        }
    )


def _publish(request: HttpRequest, wedding_id: int) -> HttpResponse:
    # The same 404 ``not_found`` as the GET endpoints for a hidden, a missing and an
    # impossible wedding id (``event_publish`` would say ``forbidden``/``unknown_topic``).
    _visible_topic(request, wedding_id)
    data = json_body(request, MAX_FRAME_BYTES)
    unknown = set(data) - {"event", "payload", "idempotency_key"}
    if unknown:
        raise RealtimeError(
            "invalid_payload", f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0]
        )
    if not isinstance(data.get("event"), str):
        raise RealtimeError("invalid_payload", "event must be a string", field="event")
    if not isinstance(data.get("payload", {}), dict):
        raise RealtimeError("invalid_payload", "payload must be an object", field="payload")
    key = data.get("idempotency_key")
    if key is not None and not isinstance(key, str):
        raise RealtimeError(
            "invalid_payload", "idempotency_key must be a string", field="idempotency_key"
        )
    if (grant := api_keys.request_key(request)) is not None:
        # A key: its scope, then its own budget, shared by every process (429).
        api_keys.require(grant, "publish")
        catalogue.spec_for(data["event"])  # invalid_payload outside the catalogue, as members
        api_keys.require_event(grant, data["event"])
        async_to_sync(get_user_limits().check_frame)("api_key_publish", grant.id)
    else:
        # The user's publish budget, shared with their WebSocket connections and every
        # process (PROTOCOL §8): 429 rate_limited with retry_after_ms.
        async_to_sync(get_user_limits().check_publish)(
            request.user.pk, data["event"], len(request.body)
        )
    result = services.event_publish(
        topic=f"wedding:{wedding_id}",
        event=data["event"],
        payload=data.get("payload", {}),
        user=request.user,
        idempotency_key=key,
    )
    body: dict[str, Any] = {"status": "ok", "topic": result.event.topic, "seq": result.event.seq}
    if not result.created:
        body["duplicate"] = True
    if grant is not None:
        body["actor"] = grant.actor
    return json_response(body, 201 if result.created else 200)


@api_view("GET")
def connections_view(request: HttpRequest) -> HttpResponse:
    """Staff: open WebSocket connections per supplier and per wedding, across processes,
    with the limits in force (``degraded``: Redis is down and the counts are this
    process's only)."""
    if not request.user.is_staff:
        raise ApiError("forbidden", "staff only", 403)
    registry = get_connection_counter()
    suppliers = async_to_sync(registry.totals)("supplier")
    weddings = async_to_sync(registry.totals)("wedding")
    wedding_day = bool(switches.state("wedding_day_mode")["enabled"])
    names = dict(Supplier.objects.filter(pk__in=suppliers).values_list("pk", "name"))
    wedding_rows = {w.pk: w for w in Wedding.objects.filter(pk__in=weddings)}
    return json_response(
        {
            "wedding_day_mode": wedding_day,
            "limits": {
                "per_user": settings.REALTIME_MAX_CONNECTIONS_PER_USER,
                "per_supplier": supplier_limit(wedding_day),
            },
            "degraded": registry.degraded,
            "suppliers": [
                {"id": pk, "name": names[pk], "connections": n}
                for pk, n in sorted(suppliers.items(), key=lambda kv: (-kv[1], kv[0]))
                if pk in names
            ],
            "weddings": [
                {
                    "id": pk,
                    "name": str(wedding_rows[pk]),
                    "date": wedding_rows[pk].date.isoformat(),
                    "connections": n,
                }
                for pk, n in sorted(weddings.items(), key=lambda kv: (-kv[1], kv[0]))
                if pk in wedding_rows
            ],
        }
    )
