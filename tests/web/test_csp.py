"""Content-Security-Policy (django-csp, CONTENT_SECURITY_POLICY in wedsync/settings.py) on
every page, and the pages still work under it in Chromium: no violation reported, the
WebSocket to the same origin connects (connect-src 'self')."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from playwright.sync_api import expect

from tests.factories import make_user
from tests.web.conftest import Browse

BASE_DIR = Path(__file__).resolve().parents[2]

POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
}


def directives(header: str) -> dict[str, str]:
    parts = (part.strip().split(None, 1) for part in header.split(";") if part.strip())
    return {name: rest for name, rest in parts}


def assert_policy(response: Any) -> None:
    assert response.status_code == 200, response.status_code
    assert "text/html" in response["Content-Type"]
    assert directives(response["Content-Security-Policy"]) == POLICY


@pytest.mark.django_db
def test_csp__on_the_web_app_pages(client: Client, day) -> None:
    assert_policy(client.get("/accounts/login/"))
    client.force_login(day.planner)
    assert_policy(client.get("/"))
    assert_policy(client.get(f"/weddings/{day.wedding.pk}/"))


@pytest.mark.django_db
def test_csp__on_the_admin_pages_and_the_staff_dashboard(client: Client) -> None:
    assert_policy(client.get("/admin/login/"))
    client.force_login(make_user(is_staff=True, is_superuser=True))
    assert_policy(client.get("/admin/"))
    assert_policy(client.get("/admin/monitoring/dashboard/"))


def test_templates__no_inline_script_style_or_event_handler() -> None:
    # what the policy relies on: every script and style is a file of this origin
    inline = re.compile(
        r"<script(?![^>]*\bsrc=)[^>]*>|<style\b|\sstyle=|\son[a-z]+=", re.IGNORECASE
    )
    templates = [*BASE_DIR.glob("templates/**/*.html"), *BASE_DIR.glob("*/templates/**/*.html")]
    assert templates
    found = [
        f"{path}: {m.group(0)}" for path in templates for m in inline.finditer(path.read_text())
    ]
    assert not found, found


_RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_csp__chromium_reports_no_violation_and_the_websocket_connects(browse: Browse, day) -> None:
    # the vendor app: its scripts, styles and the live WebSocket (ws: to the same origin)
    context = browse.context(day.planner)
    context.add_init_script(_RECORD_VIOLATIONS)
    page = context.new_page()
    response = page.goto(f"/weddings/{day.wedding.pk}/")
    assert directives(response.headers["content-security-policy"]) == POLICY
    page.wait_for_selector("#conn[data-state=live]")
    assert page.evaluate("window.__csp") == []

    # the admin login page and the staff dashboard (vendored uPlot, live charts)
    anonymous = browse.context()
    anonymous.add_init_script(_RECORD_VIOLATIONS)
    login = anonymous.new_page()
    login.goto("/admin/login/")
    expect(login.locator("#id_username")).to_be_visible()
    assert login.evaluate("window.__csp") == []
    staff = browse.context(make_user(is_staff=True))
    staff.add_init_script(_RECORD_VIOLATIONS)
    admin = staff.new_page()
    admin.goto("/admin/monitoring/dashboard/")
    admin.wait_for_load_state("networkidle")
    expect(admin.locator("canvas").first).to_be_visible()
    assert admin.evaluate("window.__csp") == []
