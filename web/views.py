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

import hashlib
import json
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import SESSION_KEY, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles import finders
from django.contrib.staticfiles.storage import staticfiles_storage
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from core.http import json_error, json_response
from realtime.errors import RealtimeError, topic_forbidden
from realtime.limits import get_user_limits
from realtime.tokens import tokens_revoke_all

from . import selectors

LOGIN_URL = "web:login"
# What the service worker keeps for the offline wedding page (docs/web.md, "Offline"):
# the page's stylesheet, icon and every module it imports. Fonts: none (system fonts).
OFFLINE_SHELL = (
    "web/app.css",
    "web/icon.svg",
    "web/wedding.js",
    "web/editor.js",
    "web/realtime.js",
    "web/util.js",
    "web/outbox-store.js",
)
SERVICE_WORKER = "web/sw.js"


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

    def form_valid(self, form: Any) -> HttpResponse:
        """Signed in: a device last used by someone else (or by nobody known) is cleared
        of what they left on it (offline copies, unsent actions), before this user's."""
        response = super().form_valid(form)
        marker = _device_user_marker(self.request.user.pk)
        if self.request.COOKIES.get(DEVICE_USER_COOKIE) != marker:
            response["Clear-Site-Data"] = CLEAR_SITE_DATA
        response.set_cookie(
            DEVICE_USER_COOKIE,
            marker,
            max_age=DEVICE_USER_MAX_AGE,
            secure=settings.SESSION_COOKIE_SECURE,
            httponly=True,
            samesite="Lax",
        )
        return response


# Signing out leaves nothing of the user on the device: the service worker's offline
# copies of the wedding pages and their states, and its registration ("storage" covers
# Cache Storage, IndexedDB with unsent actions, localStorage; docs/web.md, "Offline").
# Signing in as another user than the device's last one does the same: a session that
# merely expired leaves copies that must not be shown to the next user.
CLEAR_SITE_DATA = '"cache", "storage"'
# Who signed in last on this browser: an HMAC of the user id (not the id itself), only
# compared at the next sign-in. A year: as long as a phone stays with its vendor.
DEVICE_USER_COOKIE = "wedsync_device"
DEVICE_USER_MAX_AGE = 365 * 24 * 60 * 60


def _device_user_marker(user_id: int) -> str:
    """The device cookie's value for a user: stable, and says nothing of the user."""
    return salted_hmac("wedsync.web.device-user", str(user_id)).hexdigest()[:32]


class SignOutView(auth_views.LogoutView):
    """Sign-out (POST only, with the CSRF token), back to the sign-in page."""

    next_page = "web:login"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().post(request, *args, **kwargs)
        response["Clear-Site-Data"] = CLEAR_SITE_DATA
        return response


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
    response = redirect("web:login")
    response["Clear-Site-Data"] = CLEAR_SITE_DATA
    return response


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


def _static_bytes(name: str) -> bytes:
    """A static file's content: from STATIC_ROOT (production), else the app's folder."""
    try:
        with staticfiles_storage.open(name) as file:
            return file.read()
    except (FileNotFoundError, OSError):
        found = finders.find(name)
        if not found:
            raise
        return Path(found).read_bytes()


def _build_service_worker() -> bytes:
    """The worker's script with its shell: the URLs it caches and a version that changes
    with the content of any of them or of the worker itself (the cache's name)."""
    source = _static_bytes(SERVICE_WORKER)
    shell = [static(name) for name in OFFLINE_SHELL]
    digest = hashlib.sha256(source)
    for name in OFFLINE_SHELL:
        digest.update(_static_bytes(name))
    config = {"version": digest.hexdigest()[:16], "shell": shell}
    return b"self.WEDSYNC_OFFLINE = " + json.dumps(config).encode() + b";\n" + source


# Static files change only with a release (a new process); with DEBUG on every request
# reads them again, so an edited file gives a new version at once.
_cached_service_worker = lru_cache(maxsize=1)(_build_service_worker)


@require_GET
def service_worker(request: HttpRequest) -> HttpResponse:
    """The wedding page's service worker (/sw.js): the offline copy of the page, its
    last state and its shell. Served from the site's root, not /static/, so that its
    scope may be /weddings/; never cached by HTTP, so a release reaches the browser on
    its next check."""
    body = _build_service_worker() if settings.DEBUG else _cached_service_worker()
    response = HttpResponse(body, content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    return response
