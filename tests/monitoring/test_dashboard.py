"""The staff dashboard in real Chromium against a real server (the pattern of
tests/web/conftest.py: Debian's /usr/bin/chromium through Playwright, one server and one
browser for the module).

The server writes its metrics to a directory of this module; the test plays beat's part
by publishing ``metrics.live`` read from that directory, so what the charts show is the
server's own figures arriving over the WebSocket.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from playwright.sync_api import expect

from monitoring import figures, services
from monitoring.models import Alert
from monitoring.selectors import LIVE_MIN_WINDOW_S
from scaling.models import WeddingDayModeChange
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import Server
from tests.web.conftest import (
    DESKTOP,
    PHONE,
    Browse,
    api_publish,
    browser,  # noqa: F401 -- the fixture: one Chromium per module, as for the web app
    screenshot,
    sign_in_with_password,
    wait_until,
)
from weddings.models import Supplier, Wedding

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
]

DASHBOARD = "/admin/monitoring/dashboard/"
LIVE_MS = 20_000  # a WebSocket event (or the sweep: ~2 s), with room for a loaded CI machine


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dashboard-metrics")


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any, metrics_dir: Path) -> Iterator[Server]:
    running = Server(
        "uvicorn",
        CACHE_NAMESPACE=f"test-dash-{uuid.uuid4().hex[:12]}",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        METRICS_SAMPLE_INTERVAL="0.2",
    )
    yield running
    running.stop()


@pytest.fixture
def browse(browser: Any, server: Server, transactional_db: Any) -> Iterator[Browse]:  # noqa: F811
    session = Browse(server, browser)
    yield session
    session.close()
    assert not session.errors, "JavaScript errors:\n" + "\n".join(session.errors)


def today_wedding() -> dict[str, Any]:
    """A wedding today (UTC) with a planner and a photographer, and a staff member."""
    staff = make_user(username=f"staff{uuid.uuid4().hex[:6]}", is_staff=True)
    sign_in_with_password(staff, "staff-password")
    photographer = make_user(first_name="Ben", last_name="Okafor")
    planner = make_user(first_name="Priya", last_name="Patel")
    wedding = make_wedding(
        partner_one="Aisha", partner_two="Tom", date=dt.datetime.now(dt.UTC).date(),
        time_zone="UTC", venue_name="Hartwell Manor", status=Wedding.Status.IN_PROGRESS,
    )  # fmt: skip
    photo_co = make_supplier(users=(photographer,))
    planner_co = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    for supplier in (planner_co, photo_co):
        make_booking(supplier=supplier, wedding=wedding)
    return {"staff": staff, "photographer": photographer, "wedding": wedding}


def off_loop(fn: Any, /, **kwargs: Any) -> Any:
    """Run a service in a thread of its own: Playwright's event loop in this thread would
    make its broadcast fail (the server's sweep would still deliver it, seconds later)."""
    with ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(fn, **kwargs).result(timeout=30)
        finally:
            pool.submit(connections.close_all).result(timeout=30)


def points(page: Any, chart: str) -> int:
    return int(page.locator(f"#chart-{chart}").get_attribute("data-points") or 0)


def test_dashboard__staff_sees_live_charts_switches_mode_and_acknowledges(
    browse: Browse, metrics_dir: Path
) -> None:
    # given: the photographer on the wedding page, so that they count as connected, and a
    # scaling decision stored
    from scaling.models import ScalingDecision

    day = today_wedding()
    wedding = day["wedding"]
    browse.open(day["photographer"], f"/weddings/{wedding.pk}/")
    decision = ScalingDecision.objects.create(
        action="scale_out", asgi_processes=4, celery_workers=2, connection_limit=4000,
        previous_asgi_processes=2, previous_celery_workers=1, previous_connection_limit=2000,
        reason="forecast peak of 3,000 connections in 1 h 45", actuator="log",
    )  # fmt: skip

    # when: staff sign in to the admin and follow the index's link to the dashboard
    page = browse.page(browse.context(viewport=DESKTOP), "/admin/", live=False)
    page.fill("#id_username", day["staff"].username)
    page.fill("#id_password", "staff-password")
    page.click("input[type=submit]")
    page.get_by_role("link", name="Live dashboard").click()

    # then: the dashboard, its live socket, and today's wedding with its vendor online
    expect(page.locator("#dashboard")).to_be_visible()
    row = page.locator(f'#weddings li[data-wedding-id="{wedding.pk}"]')
    expect(row).to_contain_text("1 of 2 vendors connected")
    expect(page.locator(f'#scaling li[data-decision-id="{decision.pk}"]')).to_contain_text(
        f"{decision.asgi_processes} server processes"
    )
    expect(page.locator("canvas").first).to_be_visible()  # uPlot drew its charts
    before = points(page, "connections")

    # when: events are published and beat's live figures go out on ops (once the server
    # has sampled both connections: the photographer's and the dashboard's own)
    expect(page.locator("#live")).to_have_attribute("data-socket", "live")
    for text in ("ceremony starting", "rings ready", "confetti!"):
        api_publish(browse.server, day["photographer"], wedding, "message.posted", {"text": text})
    assert wait_until(lambda: figures.read_totals(metrics_dir)["connections"] == 2)
    off_loop(services.live_publish, path=metrics_dir)

    # then: the figures arrive over the WebSocket and the charts grow
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=LIVE_MS)
    expect(page.locator("#tile-connections .value")).to_have_text("2", timeout=LIVE_MS)
    assert wait_until(lambda: points(page, "connections") > before, timeout=LIVE_MS / 1000)
    shown = points(page, "deliveries")
    time.sleep(LIVE_MIN_WINDOW_S)  # closer readings repeat the last figures, by design
    off_loop(services.live_publish, path=metrics_dir)
    expect(page.locator("#chart-deliveries")).to_have_attribute(
        "data-points", str(shown + 1), timeout=LIVE_MS
    )

    # when: staff switch wedding-day mode on, with a reason
    page.fill("#mode-form input[name=reason]", "Saturday peak")
    page.click("#mode-toggle")

    # then: on, audited with who and why
    expect(page.locator("#mode")).to_have_attribute("data-enabled", "true")
    expect(page.locator("#mode .mode-reason")).to_have_text("Saturday peak")
    change = WeddingDayModeChange.objects.get()
    assert (change.enabled, change.reason, change.changed_by_id) == (
        True, "Saturday peak", day["staff"].pk,
    )  # fmt: skip

    # when: an alert opens meanwhile, it appears live; staff acknowledge it
    alert, _ = off_loop(services.alert_observe, rule="error_rate", value=0.25,
                        message="errors on wedding:1")  # fmt: skip
    item = page.locator(f'#alerts li[data-alert-id="{alert.pk}"]')
    expect(item).to_contain_text("errors on wedding:1", timeout=LIVE_MS)
    screenshot(page, "monitoring-dashboard")
    item.get_by_role("button", name="Acknowledge").click()

    # then
    expect(item).to_have_attribute("data-status", "acknowledged")
    assert wait_until(lambda: Alert.objects.get(pk=alert.pk).acknowledged_by_id == day["staff"].pk)

    # and wedding-day mode goes off the same way (the server's cache outlives this test)
    page.fill("#mode-form input[name=reason]", "peak over")
    page.click("#mode-toggle")
    expect(page.locator("#mode")).to_have_attribute("data-enabled", "false")


def test_dashboard__fits_a_phone_screen(browse: Browse) -> None:
    staff = make_user(is_staff=True)
    off_loop(services.alert_observe, rule="cache_hit_ratio", value=0.3,
             message="cache cold after a restart")  # fmt: skip

    page = browse.open(staff, DASHBOARD, viewport=PHONE, scale=2, live=False)

    expect(page.locator("#dashboard canvas").first).to_be_visible()
    expect(page.locator("#alerts li.alert")).to_have_count(1)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the phone"
    width = page.locator("#chart-connections canvas").bounding_box()["width"]
    assert width <= PHONE["width"]
    screenshot(page, "monitoring-dashboard-phone")


def test_dashboard__vendor_is_refused(browse: Browse) -> None:
    vendor = make_user()

    page = browse.open(vendor, DASHBOARD, live=False)

    assert "/admin/login/" in page.url
    expect(page.locator("#dashboard")).to_have_count(0)
    expect(page.locator("body")).to_contain_text("not authorized")
