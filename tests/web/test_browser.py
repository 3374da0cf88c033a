"""The web app in real Chromium against a real server: live updates, offline, conflicts.

Each test opens its pages in fresh browser contexts, signed in with a session cookie
(one test signs in through the form). Pages run in Tokyo time while the wedding is in
New York, so a time shown in the wrong zone fails. "Without reload" is checked with a
marker set on ``window`` after load: a reload would lose it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connections
from playwright.sync_api import expect

from realtime.models import Ack, Event
from realtime.services import ack_record, event_publish_system
from tests.factories import make_booking, make_wedding
from tests.web.conftest import (
    ARTIFACTS,
    BASE_DIR,
    DESKTOP,
    PHONE,
    api_publish,
    screenshot,
    sign_in_with_password,
    wait_until,
)
from weddings.models import TimelineItem

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
]

# The issue asks for the new times "within a second". The wait allows more so that a
# loaded CI machine does not fail the test on timing alone; the marker proves the
# change arrived over the WebSocket, not through a reload.
LIVE_TIMEOUT_MS = 5000


def in_another_thread(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` in a thread of its own, as a Celery task or a request would; its result.

    Playwright's sync API keeps an event loop running in the test's thread, where a
    publish's live broadcast (``async_to_sync``) cannot run: it would fail, and the event
    reach the pages only through the server's periodic sweep.
    """

    def call() -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result(timeout=30)


def mark_window(page) -> None:
    page.evaluate("window.__loadedOnce = true")


def still_same_window(page) -> bool:
    return page.evaluate("window.__loadedOnce === true")


def item_row(page, title: str):
    return page.locator(f'#timeline li[data-title="{title}"]')


def test_shift__photographer_sees_new_times_live_without_reload(browse, day) -> None:
    # given the planner and the photographer on the wedding page, in two browsers
    path = f"/weddings/{day.wedding.pk}/"
    planner = browse.open(day.planner, path)
    photographer = browse.open(day.photographer, path)
    mark_window(photographer)
    ceremony, speeches = day.items["Ceremony"], day.items["Speeches"]
    sunset = day.items["Sunset portraits"]
    expect(item_row(photographer, "Ceremony").locator(".start")).to_have_text(
        day.local(ceremony.starts_at)
    )

    # when the planner shifts the day by 20 minutes from the ceremony
    item_row(planner, "Ceremony").get_by_role("button", name="Edit").click()
    planner.locator("#item-form input[name=minutes]").fill("20")
    planner.locator("#shift-later").click()

    # then the photographer's page shows the new wedding-local times, in the same window
    later = dt.timedelta(minutes=20)
    expect(item_row(photographer, "Ceremony").locator(".start")).to_have_text(
        day.local(ceremony.starts_at + later), timeout=LIVE_TIMEOUT_MS
    )
    expect(item_row(photographer, "Ceremony").locator(".end")).to_have_text(
        day.local(ceremony.ends_at + later)
    )
    expect(item_row(photographer, "Speeches").locator(".start")).to_have_text(
        day.local(speeches.starts_at + later)
    )
    # the sunset slot is pinned to the clock and stays
    expect(item_row(photographer, "Sunset portraits").locator(".start")).to_have_text(
        day.local(sunset.starts_at)
    )
    assert still_same_window(photographer)
    # and, their items having moved, the photographer is asked to acknowledge the shift
    notice = photographer.locator(".alert.shift")
    expect(notice).to_contain_text("Timeline moved 20 min later")
    notice.get_by_role("button", name="Got it").click()
    shift = Event.objects.get(topic=day.topic, event="timeline.shifted")
    assert wait_until(lambda: Ack.objects.filter(event=shift, user=day.photographer).exists())
    assert TimelineItem.objects.get(pk=ceremony.pk).starts_at == ceremony.starts_at + later


def test_offline__missed_messages_and_emergency_arrive_in_order_and_ack_reaches_planner(
    browse, day
) -> None:
    # given both on the page, and the photographer's phone losing its signal
    path = f"/weddings/{day.wedding.pk}/"
    planner = browse.open(day.planner, path)
    photographer_context = browse.context(day.photographer, viewport=PHONE)
    photographer = browse.page(photographer_context, path)
    mark_window(photographer)
    photographer_context.set_offline(True)
    expect(photographer.locator("#conn")).to_have_attribute("data-state", "offline")

    # when the planner posts three messages and raises an emergency meanwhile
    texts = ["Cars are 10 minutes out", "Bride is ready", "Guests seated in the orangery"]
    for text in texts:
        planner.locator("#message-text").fill(text)
        planner.get_by_role("button", name="Send").click()
    planner.get_by_role("button", name="Raise emergency").click()
    planner.locator("#emergency-form select[name=kind]").select_option("medical")
    planner.locator("#emergency-form textarea[name=text]").fill("Guest fainted by the lake")
    planner.get_by_role("button", name="Alert everyone").click()
    expect(planner.locator("#feed li.msg:not(.pending)")).to_have_count(4)
    expect(photographer.locator("#feed li.msg")).to_have_count(0)

    # and the phone comes back online
    photographer_context.set_offline(False)

    # then all four appear, in the order they were posted, without a reload
    expect(photographer.locator("#conn")).to_have_attribute("data-state", "live")
    feed = photographer.locator("#feed li.msg .text")
    expect(feed).to_have_text(
        [*texts, "Emergency (Medical): Guest fainted by the lake"], timeout=LIVE_TIMEOUT_MS
    )
    seqs = [int(s) for s in photographer.locator("#feed li.msg").evaluate_all(
        "items => items.map(li => li.dataset.seq)"
    )]  # fmt: skip
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert still_same_window(photographer)
    # the banner shows, and acknowledging it reaches the planner
    banner = photographer.locator(".alert.emergency")
    expect(banner).to_contain_text("Guest fainted by the lake")
    banner.get_by_role("button", name="I've seen it").click()
    expect(banner.locator(".acked")).to_contain_text("Seen")
    expect(planner.locator(".alert.emergency .acks")).to_have_text(
        "Seen by 1: Ben Okafor", timeout=LIVE_TIMEOUT_MS
    )
    screenshot(photographer, "offline-recovered-phone")


def test_offline_past_retention__page_reloads_its_state_in_place(browse, day) -> None:
    # given the photographer's page, offline while two messages are posted
    path = f"/weddings/{day.wedding.pk}/"
    context = browse.context(day.photographer)
    page = browse.page(context, path)
    mark_window(page)
    context.set_offline(True)
    expect(page.locator("#conn")).to_have_attribute("data-state", "offline")
    first = api_publish(browse.server, day.planner, day.wedding, "message.posted", {"text": "One"})
    api_publish(browse.server, day.planner, day.wedding, "message.posted", {"text": "Two"})
    # and the first of them already gone from the history, as retention prunes it
    Event.objects.filter(topic=day.topic, seq__lte=first["seq"]).delete()

    # when the phone is back online
    context.set_offline(False)

    # then the history cannot replay what it missed: the page reloads its state, in place
    expect(page.locator("#toast")).to_contain_text("Caught up", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#feed li.msg .text")).to_have_text(["Two"])
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    assert still_same_window(page)
    # and it carries on live from there
    api_publish(browse.server, day.planner, day.wedding, "message.posted", {"text": "Three"})
    expect(page.locator("#feed li.msg .text")).to_have_text(["Two", "Three"])


def test_offline_tap__arrived_is_sent_exactly_once_after_reconnecting(browse, day) -> None:
    # given the photographer's page, counting the publish frames it sends
    path = f"/weddings/{day.wedding.pk}/"
    context = browse.context(day.photographer, viewport=PHONE)
    page = context.new_page()
    published: list[dict] = []

    def watch(ws) -> None:
        def sent(payload) -> None:
            frame = json.loads(payload) if isinstance(payload, str) else {}
            if frame.get("type") == "publish":
                published.append(frame)

        ws.on("framesent", sent)

    page.on("websocket", watch)
    page.goto(path)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    planner = browse.open(day.planner, path)

    # when "Arrived" is tapped while offline
    context.set_offline(True)
    expect(page.locator("#conn")).to_have_attribute("data-state", "offline")
    page.locator('#my-status button[data-status="arrived"]').click()

    # then it waits on the phone, nothing is sent
    expect(page.locator("#outbox")).to_have_text("1 waiting to send")
    expect(page.locator(".waiting-note")).to_contain_text("waiting for signal")
    assert published == []
    assert not Event.objects.filter(topic=day.topic, event="vendor.status").exists()

    # and once back online it is sent, once, and the planner sees the photographer arrived
    context.set_offline(False)
    expect(page.locator("#outbox")).to_be_hidden(timeout=LIVE_TIMEOUT_MS)
    vendor = f'#vendors li[data-supplier="{day.photo_co.pk}"] .pill'
    expect(planner.locator(vendor)).to_contain_text("Arrived", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator('#my-status button[data-status="arrived"]')).to_have_class(
        "status-button current"
    )
    stored = Event.objects.filter(topic=day.topic, event="vendor.status")
    assert [e.payload for e in stored] == [{"supplier_id": day.photo_co.pk, "status": "arrived"}]
    assert len(published) == 1
    assert published[0]["idempotency_key"] == stored[0].idempotency_key


def test_stale_edit__shows_conflict_and_retry_keeps_both_changes(browse, day) -> None:
    # given the planner editing the speeches' title
    path = f"/weddings/{day.wedding.pk}/"
    planner = browse.open(day.planner, path)
    speeches = day.items["Speeches"]
    item_row(planner, "Speeches").get_by_role("button", name="Edit").click()
    planner.locator("#item-form input[name=title]").fill("Speeches and toasts")

    # when someone else moves the item to another room first
    api_publish(
        browse.server, day.planner, day.wedding, "timeline.item.updated",
        {"id": speeches.pk, "version": speeches.version, "location": "Great hall"},
    )  # fmt: skip
    planner.get_by_role("button", name="Save", exact=True).click()

    # then the conflict is shown with the current item, and the edit is kept
    conflict = planner.locator("#conflict")
    expect(conflict).to_be_visible()
    expect(planner.locator("#conflict-current")).to_contain_text("Great hall (version 2)")
    expect(planner.locator("#item-form input[name=title]")).to_have_value("Speeches and toasts")
    assert TimelineItem.objects.get(pk=speeches.pk).title == "Speeches"

    # and saving again on top of the current version keeps both changes
    planner.get_by_role("button", name="Save mine over theirs").click()
    expect(planner.locator("#item-dialog")).to_be_hidden()
    expect(item_row(planner, "Speeches and toasts").locator(".where")).to_contain_text("Great hall")
    item = TimelineItem.objects.get(pk=speeches.pk)
    assert (item.title, item.location, item.version) == ("Speeches and toasts", "Great hall", 3)


def test_other_wedding__vendor_gets_the_same_404_and_sees_nothing_of_it(browse, day) -> None:
    # given a caterer booked on another wedding only
    context = browse.context(day.outsider)
    page = browse.page(context)

    # when they open this wedding's page, and a page that does not exist
    hidden = page.goto(f"/weddings/{day.wedding.pk}/")
    hidden_text = page.locator("main").inner_text()
    hidden_html = page.content()
    missing = page.goto("/weddings/987654321/")

    # then both are the same 404, with nothing of the wedding in it
    assert hidden.status == missing.status == 404
    assert page.locator("main").inner_text() == hidden_text
    for secret in ("Aisha", "Hartwell", "Ceremony", "Juniper", "Kestrel", str(day.topic)):
        assert secret not in hidden_html
    assert page.locator("#wedding-state").count() == 0
    # and their own Saturday lists their wedding, not this one
    page.goto("/")
    expect(page.locator(".wedding-card")).to_have_count(1)
    expect(page.locator(".wedding-card h2")).to_have_text("Olivia & Rhys")
    assert "Aisha" not in page.content()


def test_sign_in__my_saturday_counts_changes_live_and_sign_out_ends_session(browse, day) -> None:
    # given the photographer signing in through the form
    sign_in_with_password(day.photographer, "correct horse battery")
    page = browse.page(browse.context(viewport=PHONE), "/", live=False)
    expect(page).to_have_url(f"{browse.base_url}/accounts/login/?next=/")
    page.get_by_label("Username").fill(day.photographer.username)
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()

    # then My Saturday lists the wedding, live, as not opened yet
    card = page.locator(f'.wedding-card[data-wedding="{day.wedding.pk}"]')
    expect(card.locator("h2")).to_have_text("Aisha & Tom")
    expect(card.locator(".wedding-when")).to_contain_text(
        f"Ceremony {day.wedding.ceremony_time:%H:%M} E"  # EDT or EST: New York time
    )
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(card.locator(".changes")).to_have_text("Not opened yet")
    screenshot(page, "saturday-phone")

    # when they look at the wedding and come back
    card.locator("a").click()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    page.go_back()
    expect(card.locator(".changes")).to_have_text("Up to date")
    mark_window(page)

    # and the planner posts a message
    api_publish(browse.server, day.planner, day.wedding, "message.posted", {"text": "On my way"})

    # then the card counts it live
    expect(card.locator(".changes")).to_have_text(
        "1 new since your last look", timeout=LIVE_TIMEOUT_MS
    )
    expect(card.locator(".last-change")).to_contain_text("New message")
    assert still_same_window(page)

    # and signing out ends the session
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{browse.base_url}/accounts/login/")
    page.goto(f"/weddings/{day.wedding.pk}/")
    expect(page).to_have_url(f"{browse.base_url}/accounts/login/?next=/weddings/{day.wedding.pk}/")


def test_static_files__served_by_the_app_itself(browse) -> None:
    # WhiteNoise under uvicorn: no CDN, no separate web server
    with urllib.request.urlopen(f"{browse.base_url}/static/web/realtime.js", timeout=5) as r:  # noqa: S310
        body = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/javascript")
    assert "export class RealtimeClient" in body


DOC_SCREENSHOTS = {
    # artifact name → the name it has in docs/screenshots/ (one of each page)
    "sign-in-phone": "sign-in.png",
    "saturday-phone": "my-saturday.png",
    "wedding-planner-desktop": "wedding-planner.png",
    "wedding-photographer-phone": "wedding-vendor.png",
    "wedding-couple-phone": "wedding-couple.png",
}


def test_screenshots__each_page_at_phone_and_desktop_sizes(browse, day) -> None:
    # given a wedding in full swing: statuses, messages, an emergency, an acknowledgement
    server, wedding = browse.server, day.wedding
    api_publish(
        server,
        day.photographer,
        wedding,
        "vendor.status",
        {"supplier_id": day.photo_co.pk, "status": "arrived"},
    )
    api_publish(
        server,
        day.florist,
        wedding,
        "vendor.status",
        {"supplier_id": day.florist_co.pk, "status": "running_late", "minutes_late": 10},
    )
    api_publish(
        server,
        day.planner,
        wedding,
        "vendor.status",
        {"supplier_id": day.planner_co.pk, "status": "ready"},
    )
    api_publish(
        server,
        day.planner,
        wedding,
        "message.posted",
        {"text": "Morning all! Cars leave the hotel in 20 minutes."},
    )
    api_publish(
        server,
        day.florist,
        wedding,
        "message.posted",
        {"text": "Stuck behind a tractor, arch flowers 10 min late."},
    )
    api_publish(
        server,
        day.photographer,
        wedding,
        "message.posted",
        {"text": "No problem, I'll start with the detail shots."},
    )
    api_publish(server, day.florist, wedding, "emergency.raised",
                {"kind": "vendor_missing", "text": "Ring cushion left at the hotel"})  # fmt: skip
    raised = Event.objects.get(topic=day.topic, event="emergency.raised")
    in_another_thread(ack_record, user=day.photographer, topic=day.topic, seq=raised.seq)

    # and next Saturday booked too; the photographer last looked four changes ago
    next_week = make_wedding(
        partner_one="Femi", partner_two="Grace", date=wedding.date + dt.timedelta(days=7),
        ceremony_time=dt.time(13, 30), venue_name="The Old Boathouse",
    )  # fmt: skip
    make_booking(supplier=day.photo_co, wedding=next_week)
    saturday = browse.open(day.photographer, "/", viewport=PHONE)
    seq = Event.objects.filter(topic=day.topic).order_by("-seq").first().seq
    saturday.evaluate(
        "([key, seen]) => localStorage.setItem(key, seen)",
        [f"wedsync:seen:{day.photographer.pk}:{wedding.pk}", str(seq - 4)],
    )
    saturday.reload()
    expect(saturday.locator(".changes").first).to_have_text("4 new since your last look")

    saved = []
    path = f"/weddings/{wedding.pk}/"
    pages = [
        ("sign-in", browse.open(None, "/accounts/login/", viewport=PHONE, live=False)),
        ("saturday", saturday),
    ]
    for role, user in (("planner", day.planner), ("photographer", day.photographer),
                       ("couple", day.couple)):  # fmt: skip
        page = browse.open(user, path, viewport=PHONE)
        expect(page.locator("#timeline li.is-now")).to_have_count(1)
        if role != "couple":
            expect(page.locator("#feed li.msg")).to_have_count(4)
            expect(page.locator(".alert.emergency")).to_have_count(1)
        pages.append((f"wedding-{role}", page))

    # when each page is captured on a phone, and again on a desktop screen
    for name, page in pages:
        saved.append(screenshot(page, f"{name}-phone"))
        page.set_viewport_size(DESKTOP)
        saved.append(screenshot(page, f"{name}-desktop"))

    # then every page was captured at both sizes
    assert len(saved) == 10 and all(p.stat().st_size > 10_000 for p in saved)
    # and the couple's read-only page shows no vendor alerts, also when one arrives live
    couple = dict(pages)["wedding-couple"]
    api_publish(
        server,
        day.planner,
        wedding,
        "emergency.raised",
        {"kind": "weather", "text": "Storm warning"},
    )
    api_publish(server, day.planner, wedding, "vendor.status",
                {"supplier_id": day.planner_co.pk, "status": "done"})  # fmt: skip
    vendor = f'#vendors li[data-supplier="{day.planner_co.pk}"] .pill'
    expect(couple.locator(vendor)).to_contain_text("Done", timeout=LIVE_TIMEOUT_MS)
    expect(couple.locator(".alert")).to_have_count(0)
    assert "Storm warning" not in couple.content()
    if os.environ.get("WEDSYNC_DOC_SCREENSHOTS"):
        docs = BASE_DIR / "docs" / "screenshots"
        docs.mkdir(exist_ok=True)
        for name, target in DOC_SCREENSHOTS.items():
            shutil.copyfile(ARTIFACTS / f"{name}.png", docs / target)


def test_ack_overdue__the_planner_is_told_who_has_not_acknowledged(browse, day, caplog) -> None:
    # given the planner on the wedding page
    from weddings.models import SupplierMembership

    planner = browse.open(day.planner, f"/weddings/{day.wedding.pk}/")
    suppliers = list(
        SupplierMembership.objects.filter(user=day.planner).values_list("supplier_id", flat=True)
    )

    # when monitoring reports an emergency unacknowledged for 5 minutes (from a thread of
    # its own, as the monitoring task does)
    with caplog.at_level(logging.ERROR):
        in_another_thread(
            event_publish_system,
            day.topic,
            "alert.ack_overdue",
            {"alert_id": 1, "seq": 1, "event": "emergency.raised", "minutes": 5,
             "missing": [11, 12], "planner_supplier_ids": suppliers, "severity": "warning"},
        )  # fmt: skip

    # then it was broadcast live (no failure left it to the server's sweep), and the
    # planner's page says so
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    expect(planner.locator("#toast")).to_contain_text(
        "Not yet acknowledged after 5 min: 2 of the vendors", timeout=LIVE_TIMEOUT_MS
    )
