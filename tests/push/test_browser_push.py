"""The page half of Web Push in real Chromium against a real server (tests/web/conftest.py):
the page never asks for permission on load, only from its button; a push delivered to
the wedding page's service worker (CDP ``ServiceWorker.deliverPushMessage``, as the push
service would) shows the notification with its "I've seen it" action, and that action
records the member's ack through /api/push/ack.

A real push service (FCM, Mozilla's) cannot be reached here, so the browser's
``pushManager.subscribe`` is not expected to succeed; the server half is tested end to end
against a local decrypting push service in tests/push/test_push.py."""

from __future__ import annotations

import html
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from push.conf import generate_keys
from push.services import message_for
from realtime.models import Ack, Event
from tests.servers import BASE_DIR, Server
from tests.web.conftest import api_publish, browse, browser, day, wait_until  # noqa: F401 -- the web tests' fixtures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

DOCS_SCREENSHOTS = BASE_DIR / "docs" / "screenshots"

NOTIFICATIONS = """() => navigator.serviceWorker.ready
  .then((registration) => registration.getNotifications())
  .then((shown) => shown.map((n) => ({
    title: n.title, body: n.body, tag: n.tag, data: n.data,
    actions: n.actions.map((a) => a.action), requireInteraction: n.requireInteraction,
  })))"""


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Server]:
    """The web tests' server, with push configured."""
    private, public = generate_keys()
    running = Server(
        "uvicorn",
        CACHE_NAMESPACE=f"test-push-{uuid.uuid4().hex[:12]}",
        WEB_PUSH_VAPID_PRIVATE_KEY=private,
        WEB_PUSH_VAPID_PUBLIC_KEY=public,
        WEB_PUSH_SUBJECT="mailto:ops@wedsync.test",
    )
    yield running
    running.stop()


def _registration_id(cdp: Any, page: Any, scope: str) -> str:
    """The id of the service worker registration of ``scope`` (CDP ServiceWorker)."""
    found: dict[str, str] = {}

    def updated(params: dict) -> None:
        for registration in params["registrations"]:
            if registration["scopeURL"] == scope and not registration["isDeleted"]:
                found["id"] = registration["registrationId"]

    cdp.on("ServiceWorker.workerRegistrationUpdated", updated)
    cdp.send("ServiceWorker.enable")
    deadline = time.monotonic() + 5
    while "id" not in found and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    return found["id"]


# The notification as the worker built it, drawn as a phone's shade shows one: headless
# Chromium has no notification area to take a picture of, so docs/web.md's picture is
# this card with the real title, body and action titles.
CARD = """
<body style="margin:0;background:#1f2430;font:15px system-ui,sans-serif;padding:16px">
<div style="background:#fff;border-radius:14px;padding:14px 16px;max-width:360px">
  <div style="color:#555;font-size:12px">WedSync · now</div>
  <div style="font-weight:600;margin-top:6px">{title}</div>
  <div style="margin-top:2px">{body}</div>
  <div style="margin-top:10px;color:#1a56db;font-weight:600">{actions}</div>
</div></body>"""


def _picture_of_the_notification(context: Any, page: Any) -> None:
    details = page.evaluate("""() => navigator.serviceWorker.ready
      .then((r) => r.getNotifications())
      .then(([n]) => ({title: n.title, body: n.body,
                       actions: n.actions.map((a) => a.title)}))""")
    card = context.new_page()
    card.set_viewport_size({"width": 392, "height": 150})
    card.set_content(
        CARD.format(
            title=html.escape(details["title"]),
            body=html.escape(details["body"]),
            actions=" · ".join(html.escape(a).upper() for a in details["actions"]),
        )
    )
    card.screenshot(path=str(DOCS_SCREENSHOTS / "push-notification.png"))
    card.close()


def test_push__button_asks_a_pushed_emergency_shows_and_its_action_acks(browse, day) -> None:  # noqa: F811
    # given: the photographer's wedding page, with no permission given to the site
    context = browse.context(day.photographer)
    page = browse.page(context, f"/weddings/{day.wedding.pk}/")
    page.wait_for_selector("body[data-offline-ready]")  # the worker controls the page
    button = page.locator("#enable-push")
    expect(button).to_be_visible()
    # then: nothing was asked on load (a request would have been answered "denied")
    assert page.evaluate("Notification.permission") == "default"

    # when: the member allows notifications and taps the button
    context.grant_permissions(["notifications"], origin=browse.base_url)
    button.click()
    # then: the permission came from the tap; the subscription itself needs a real push
    # service, which this machine cannot reach ("failed" then, with the button back)
    expect(page.locator("body[data-push=on], body[data-push=failed]")).to_have_count(1)
    assert page.evaluate("Notification.permission") == "granted"

    # when: an emergency is raised and its push reaches the worker
    api_publish(browse.server, day.planner, day.wedding, "emergency.raised",
                {"kind": "fire", "text": "Smoke in the marquee"})  # fmt: skip
    event = Event.objects.get(topic=day.topic, event="emergency.raised")
    message = message_for(event, day.photographer)
    cdp = context.new_cdp_session(page)
    registration_id = _registration_id(cdp, page, f"{browse.base_url}/weddings/")
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": browse.base_url, "registrationId": registration_id,
         "data": json.dumps(message)},
    )  # fmt: skip

    # then: the notification is shown, critical (stays), with its action
    page.wait_for_function(f"() => ({NOTIFICATIONS})().then((shown) => shown.length === 1)")
    (shown,) = page.evaluate(NOTIFICATIONS)
    assert shown["title"] == "Aisha & Tom · Emergency: fire"
    assert shown["body"] == "Smoke in the marquee"
    assert shown["tag"] == f"{day.topic}#{event.seq}"
    assert shown["actions"] == ["ack"] and shown["requireInteraction"] is True
    assert shown["data"]["url"] == f"/weddings/{day.wedding.pk}/"
    if os.environ.get("WEDSYNC_DOC_SCREENSHOTS") == "1":
        _picture_of_the_notification(context, page)

    # when: its "I've seen it" runs in the worker (as notificationclick calls it)
    (worker,) = context.service_workers
    answer = worker.evaluate("(token) => ackFromNotification(token)", shown["data"]["ack"])

    # then: the photographer's ack is recorded by the server
    assert answer["seq"] == event.seq
    assert wait_until(lambda: Ack.objects.filter(event=event, user=day.photographer).exists())
    # Chromium's own console line for the tap's subscribe in a Playwright context (which
    # is incognito); the page caught the failure (data-push=failed) and logged nothing.
    browse.errors[:] = [e for e in browse.errors if "Push API in incognito mode" not in e]
