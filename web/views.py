"""Views of the vendor web app: sign-in and sign-out, "My Saturday", the live wedding page.

Each view checks who is asking before it reads anything. A wedding the user may not see
and one that does not exist get the same 404 page (and the same JSON 404 from the state
endpoint), so a page reveals nothing of other weddings. Every POST (sign-in, sign-out)
is CSRF-protected by Django's middleware; everything else the pages do goes over the
realtime WebSocket.

"Sign out everywhere" (``POST /accounts/logout/everywhere/``) ends every session of the
user (this browser's and the others') and every realtime token: their open WebSockets
close with 4001 (``realtime.tokens.tokens_revoke_all``, docs/security.md).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import SESSION_KEY, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from core.http import json_error, json_response
from realtime.errors import RealtimeError, topic_forbidden
from realtime.limits import get_user_limits
from realtime.tokens import tokens_revoke_all

from . import selectors

LOGIN_URL = "web:login"


def _page_state(request: HttpRequest, wedding_id: int) -> tuple[Any, dict[str, Any] | None]:
    """The wedding and its page state, or (None, None) when the user may not see it."""
    found = selectors.visible_wedding(request.user, wedding_id)
    if found is None:
        return None, None
    return found, selectors.wedding_page_state(user=request.user, wedding=found)


def _not_found(request: HttpRequest) -> HttpResponse:
    """The one answer for a wedding that is hidden from the user or does not exist."""
    return render(request, "web/not_found.html", status=404)


def _unavailable(request: HttpRequest) -> HttpResponse:
    """The database cannot be reached: a page that tries again by itself."""
    response = render(request, "web/unavailable.html", status=503)
    response["Retry-After"] = "10"
    return response


class SignInView(auth_views.LoginView):
    """Sign-in with Django's auth; on a development machine it lists the demo logins."""

    template_name = "web/login.html"
    redirect_authenticated_user = True
    next_page = "web:home"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        if settings.DEBUG:
            context["demo"] = selectors.demo_logins(Path(settings.VAR_DIR) / "demo.json")
        return context


class SignOutView(auth_views.LogoutView):
    """Sign-out (POST only, with the CSRF token), back to the sign-in page."""

    next_page = "web:login"


def _end_sessions(user_id: int) -> int:
    """Delete every unexpired session of a user (database and cache: ``cached_db``).

    Sessions are not indexed by user, so this decodes each unexpired one: a rare,
    deliberate action, not a hot path. Returns how many were ended.
    """
    from django.contrib.sessions.models import Session

    engine = import_module(settings.SESSION_ENGINE)
    ended = 0
    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        if session.get_decoded().get(SESSION_KEY) == str(user_id):
            engine.SessionStore(session_key=session.session_key).delete()
            ended += 1
    return ended


@require_POST
@never_cache
@login_required(login_url=LOGIN_URL)
def sign_out_everywhere(request: HttpRequest) -> HttpResponse:
    """Sign out on every device: every realtime token stops working and every open
    WebSocket of the user closes with 4001, every session of the user ends (this one
    last, with ``logout``). POST with the CSRF token, like sign-out."""
    user_id = request.user.pk
    tokens_revoke_all(request.user)
    _end_sessions(user_id)
    logout(request)
    return redirect("web:login")


@require_GET
@never_cache
@login_required(login_url=LOGIN_URL)
def saturday(request: HttpRequest) -> HttpResponse:
    """My Saturday: the user's weddings from today on, with what changed since last look."""
    try:
        rows = selectors.saturday_weddings(request.user)
    except DatabaseError:
        return _unavailable(request)
    live = [{"id": row["id"], "topic": row["topic"], "seq": row["seq"]} for row in rows]
    return render(
        request,
        "web/saturday.html",
        {"weddings": rows, "live": {"user_id": request.user.pk, "weddings": live}},
    )


@require_GET
@never_cache
@login_required(login_url=LOGIN_URL)
def wedding(request: HttpRequest, wedding_id: int) -> HttpResponse:
    """The live wedding page: its state is embedded, the WebSocket keeps it current."""
    try:
        found, state = _page_state(request, wedding_id)
    except DatabaseError:
        return _unavailable(request)
    if state is None:
        return _not_found(request)
    return render(request, "web/wedding.html", {"wedding": found, "state": state})


@require_GET
@never_cache
def wedding_state(request: HttpRequest, wedding_id: int) -> HttpResponse:
    """The wedding page's state as JSON: reloaded when the history cannot fill a gap."""
    if not request.user.is_authenticated:
        return json_error("unauthenticated", "sign in again", 401)
    try:
        # The user's snapshot budget, shared with the snapshot API (PROTOCOL §8).
        async_to_sync(get_user_limits().check_frame)("snapshot", request.user.pk)
    except RealtimeError as err:
        return json_error(err.code, err.message, 429, **err.extra)
    try:
        _, state = _page_state(request, wedding_id)
    except DatabaseError:
        return json_error("unavailable", "the database is not available", 503)
    if state is None:
        return json_error("not_found", topic_forbidden(f"wedding:{wedding_id}").message, 404)
    return json_response(state)
