"""Fixtures of the web app's tests: a wedding day to look at, a real server, Chromium.

Browser tests are marked ``browser``. They drive Debian's Chromium (/usr/bin/chromium)
through Playwright; without it they skip with the reason on a laptop, and with
``CI=true`` they fail, so CI never skips them (as the ``redis``/``postgres`` markers in
tests/conftest.py do). One server process and one browser serve a whole module; each
test gets fresh browser contexts, closed before its database is flushed.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import time
import urllib.request
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.test import Client
from django.utils import timezone

from realtime.tokens import token_issue
from tests.conftest import IN_CI
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import Server
from weddings.models import Supplier, SupplierMembership, TimelineItem, Wedding

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BASE_DIR = Path(__file__).resolve().parents[2]
ARTIFACTS = BASE_DIR / "artifacts" / "screenshots"
# The wedding's zone and the browser's differ, so a time shown in the browser's zone
# by mistake cannot pass for the wedding's.
WEDDING_ZONE = "America/New_York"
BROWSER_ZONE = "Asia/Tokyo"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"')

_names = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "browser: drives Debian's Chromium (/usr/bin/chromium) through Playwright; skipped "
        "without it unless CI=true",
    )


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _require_chromium(request: pytest.FixtureRequest) -> None:
    if not request.node.get_closest_marker("browser"):
        return
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing (install it with: apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (`make` installs the development lock)")


# --- a wedding day ------------------------------------------------------------------------


@dataclass
class Day:
    """One wedding today (in New York) with its people, and another wedding beside it."""

    wedding: Wedding
    planner: Any
    photographer: Any
    florist: Any
    couple: Any
    outsider: Any  # a vendor booked on the other wedding only
    other: Wedding
    planner_co: Supplier
    photo_co: Supplier
    florist_co: Supplier
    items: dict[str, TimelineItem] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        return self.wedding.topic

    def local(self, value: dt.datetime) -> str:
        """A time as the page must show it: "HH:MM" in the wedding's zone."""
        return value.astimezone(self.wedding.zone).strftime("%H:%M")


def _person(first: str, last: str, **extra: Any) -> Any:
    n = next(_names)
    return make_user(username=f"{first.lower()}{n}", first_name=first, last_name=last, **extra)


def _member(supplier: Supplier, user: Any, role: str = "member") -> None:
    SupplierMembership.objects.create(supplier=supplier, user=user, role=role)


def build_day() -> Day:
    """A wedding running now: items from an hour ago to the evening, in its own zone."""
    zone = WEDDING_ZONE
    now = timezone.now()
    local_now = now.astimezone(zoneinfo.ZoneInfo(zone))
    # The day began half an hour ago (on a five-minute mark); the ceremony is 70 min in.
    start = (now - dt.timedelta(minutes=30)).replace(second=0, microsecond=0)
    start -= dt.timedelta(minutes=start.minute % 5)
    ceremony_at = (start + dt.timedelta(minutes=70)).astimezone(zoneinfo.ZoneInfo(zone))
    wedding = make_wedding(
        partner_one="Aisha",
        partner_two="Tom",
        date=local_now.date(),
        ceremony_time=ceremony_at.time(),
        time_zone=zone,
        venue_name="Hartwell Manor",
        venue_address="Oxford Road",
        guest_count=120,
        status=Wedding.Status.IN_PROGRESS,
    )
    planner = _person("Priya", "Patel")
    photographer = _person("Ben", "Okafor")
    florist = _person("Isla", "Green")
    couple = _person("Aisha", "Khan")
    outsider = _person("Zara", "Outside")
    wedding.couple.add(couple)
    planner_co = Supplier.objects.create(name="Juniper Weddings", category="planner")
    photo_co = Supplier.objects.create(name="Kestrel Photography", category="photographer")
    florist_co = Supplier.objects.create(name="Foxglove Flowers", category="florist")
    _member(planner_co, planner, "coordinator")
    _member(photo_co, photographer)
    _member(florist_co, florist)
    for supplier in (planner_co, photo_co, florist_co):
        make_booking(supplier=supplier, wedding=wedding)

    other = make_wedding(
        partner_one="Olivia",
        partner_two="Rhys",
        date=now.astimezone(zoneinfo.ZoneInfo("Europe/London")).date(),
        time_zone="Europe/London",
        venue_name="Cliffside Chapel",
    )
    outsider_co = make_supplier(category=Supplier.Category.CATERER, users=(outsider,))
    make_booking(supplier=outsider_co, wedding=other)
    TimelineItem.objects.create(
        wedding=other,
        title="Harbour toast",
        starts_at=now + dt.timedelta(hours=1),
        location="Quay",
    )

    plan = [
        # title, minutes from start, length, suppliers, key moment, pinned
        ("Getting ready", 0, 60, (planner_co, photo_co), False, False),
        ("Ceremony", 70, 40, (planner_co, photo_co, florist_co), True, False),
        ("Drinks reception", 110, 60, (planner_co, florist_co), False, False),
        ("Sunset portraits", 150, 20, (planner_co, photo_co), False, True),
        ("Speeches", 180, 30, (planner_co, photo_co), False, False),
        ("First dance", 220, 15, (planner_co, photo_co), True, False),
    ]
    day = Day(wedding, planner, photographer, florist, couple, outsider, other,
              planner_co, photo_co, florist_co)  # fmt: skip
    for title, offset, length, suppliers, key, pinned in plan:
        begins = start + dt.timedelta(minutes=offset)
        item = TimelineItem.objects.create(
            wedding=wedding,
            title=title,
            starts_at=begins,
            ends_at=begins + dt.timedelta(minutes=length),
            location={"Ceremony": "Orangery"}.get(title, "House"),
            key_moment=key,
            pinned=pinned,
        )
        item.suppliers.set(suppliers)
        day.items[title] = item
    return day


@pytest.fixture
def day(db: Any) -> Day:
    return build_day()


def sign_in_with_password(user: Any, password: str) -> None:
    """Give a user a password that a server process accepts at its sign-in form.

    The tests hash with MD5 (fast), which a server's default hashers do not know; a
    PBKDF2 hash with few iterations is fast and known to both.
    """
    user.password = PBKDF2PasswordHasher().encode(password, "websalt", iterations=1000)
    user.save(update_fields=["password"])


def without_csrf(html: str) -> str:
    """A page without its per-response CSRF token, to compare two pages."""
    return CSRF_INPUT.sub('name="csrfmiddlewaretoken" value=""', html)


# --- a real server and a real browser ------------------------------------------------------


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Server]:
    """One ASGI server (uvicorn) per module, in production shape (tests/servers.py): DEBUG
    off, the hashed static files of a ``collectstatic`` run served by WhiteNoise, and the
    default sweep interval, so what reaches a page live must come by the live path.

    Its cache namespace is its own: it starts before any test picks one, and the test
    database's ids start again on every run while Redis keeps the last run's entries.
    Its retention is one event per topic: the tests that delete events as pruning would
    then find the server unable to replay them, also from the recent events its hub
    keeps (never more than retention); nothing prunes the test database meanwhile.
    """
    running = Server(
        "uvicorn",
        CACHE_NAMESPACE=f"test-web-{uuid.uuid4().hex[:12]}",
        REALTIME_RETENTION_EVENTS="1",
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module (checked first: no server starts without it)."""
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing (install it with: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps its event loop marked as running in this thread, which
    # Django takes for an async context; the tests' ORM calls are plain sync calls made
    # between browser steps, so Django's guard is lifted for this module only.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@dataclass
class Browse:
    """Open pages as a user; every context is closed when the test ends."""

    server: Server
    browser: Any
    contexts: list = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def context(self, user: Any | None = None, *, viewport: dict | None = None, scale: float = 1):
        """A browser context signed in as ``user`` (a session cookie), in Tokyo time."""
        context = self.browser.new_context(
            base_url=self.base_url,
            viewport=viewport or DESKTOP,
            device_scale_factor=scale,
            timezone_id=BROWSER_ZONE,
            locale="en-GB",
        )
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        if user is not None:
            client = Client()
            client.force_login(user)
            name = settings.SESSION_COOKIE_NAME
            context.add_cookies(
                [{"name": name, "value": client.cookies[name].value, "url": self.base_url}]
            )
        return context

    def page(self, context: Any, path: str | None = None, *, live: bool = True) -> Any:
        """A new page of ``context``, at ``path``, waiting for the live connection."""
        page = context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        page.on(
            "console",
            lambda msg: (
                msg.type == "error"
                and "Failed to load resource" not in msg.text
                and self.errors.append(f"{page.url}: {msg.text}")
            ),
        )
        if path is not None:
            page.goto(path)
            if live:
                page.wait_for_selector("#conn[data-state=live]")
        return page

    def open(self, user: Any, path: str, **kwargs: Any) -> Any:
        """A page at ``path`` in a fresh context signed in as ``user``."""
        live = kwargs.pop("live", True)
        return self.page(self.context(user, **kwargs), path, live=live)

    def close(self) -> None:
        for context in self.contexts:
            context.close()
        self.contexts.clear()


@pytest.fixture
def browse(browser: Any, server: Server, transactional_db: Any) -> Iterator[Browse]:
    """Browser contexts for one test; JavaScript errors on any page fail the test."""
    session = Browse(server, browser)
    yield session
    session.close()
    assert not session.errors, "JavaScript errors:\n" + "\n".join(session.errors)


def api_publish(server: Server, user: Any, wedding: Wedding, event: str, payload: dict) -> dict:
    """Publish through the server's HTTP API as ``user``, as an integration would."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/weddings/{wedding.pk}/events",
        data=json.dumps({"event": event, "payload": payload}).encode(),
        headers={
            "Authorization": f"Bearer {token_issue(user=user)}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        return json.loads(response.read())


def screenshot(page: Any, name: str) -> Path:
    """Save a screenshot among the test artifacts (git-ignored); the path it went to."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll a database condition the browser's actions bring about."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
