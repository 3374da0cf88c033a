"""The wedding page on the day, in real Chromium against a real server: contacts one tap
away, the printed run sheet, and the planner adding and deleting items live.

One server and one browser serve the module (tests/web/conftest.py). The print test
renders the page as Chromium prints it (``page.pdf``, A4) and checks, with print media
emulated, what the sheet keeps and what it drops.
"""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.error
import zlib
from typing import Any

import pytest
from playwright.sync_api import expect

from realtime.models import Event
from tests.web.conftest import ARTIFACTS, BASE_DIR, PHONE, Day, api_publish, wait_until
from tests.web.test_contacts_views import PHOTO_PHONE, PLANNER_PHONE, with_phones
from weddings.models import TimelineItem

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
]

LIVE_TIMEOUT_MS = 5000
MAPS = "https://www.google.com/maps/search/?api=1&query=Hartwell%20Manor%2C%20Oxford%20Road"
# A4 in PDF points (1/72 inch): 210 × 297 mm.
A4_POINTS = (595.0, 842.0)


def item_row(page: Any, title: str) -> Any:
    return page.locator(f'#timeline li[data-title="{title}"]')


def test_contacts__members_tap_to_call_the_couple_get_the_venue_only(browse, day: Day) -> None:
    # given suppliers with numbers (the florist has none)
    with_phones(day)
    path = f"/weddings/{day.wedding.pk}/"

    # when a vendor opens the page on a phone (contacts come with the page: no need to wait
    # for the live connection)
    vendor = browse.open(day.photographer, path, viewport=PHONE, live=False)

    # then every number is a tel: link, the planner's first, and the venue a maps link
    contacts = vendor.locator("#contacts li.contact")
    expect(contacts.locator(".name")).to_have_text(
        ["Juniper Weddings", "Foxglove Flowers", "Kestrel Photography"]
    )
    expect(contacts.nth(0).locator("a.tel")).to_have_attribute("href", "tel:+442079460001")
    expect(contacts.nth(0).locator("a.tel")).to_have_text(PLANNER_PHONE)
    expect(contacts.nth(1).locator("a.tel")).to_have_count(0)
    expect(contacts.nth(1)).to_contain_text("No number on file")
    expect(contacts.nth(2).locator("a.tel")).to_have_attribute("href", "tel:07700900123")
    expect(vendor.locator("#venue-contact a.maps")).to_have_attribute("href", MAPS)
    # a tap target of at least 44 CSS px on a phone
    assert contacts.nth(0).locator("a.tel").bounding_box()["height"] >= 44

    # when the couple open it
    couple = browse.open(day.couple, path, viewport=PHONE, live=False)

    # then the venue is there, and no number at all (role matrix: read.contacts)
    expect(couple.locator("#venue-contact a.maps")).to_have_attribute("href", MAPS)
    expect(couple.locator("a[href^='tel:']")).to_have_count(0)
    assert PHOTO_PHONE not in couple.content() and PLANNER_PHONE not in couple.content()


def test_planner_adds_and_deletes_an_item__other_pages_follow_live(browse, day: Day) -> None:
    # given the planner and the photographer on the page
    path = f"/weddings/{day.wedding.pk}/"
    planner = browse.open(day.planner, path)
    photographer = browse.open(day.photographer, path, viewport=PHONE)
    photographer.evaluate("window.__loadedOnce = true")
    # the photographer has no such controls
    expect(photographer.locator("#add-item")).to_have_count(0)
    expect(photographer.locator("#item-dialog")).to_have_count(0)

    # when the planner adds an item from the page
    planner.locator("#add-item").click()
    form = planner.locator("#item-form")
    expect(form.locator("fieldset.shift")).to_be_hidden()
    form.locator("input[name=title]").fill("Fireworks")
    form.locator("input[name=start]").fill("21:30")
    form.locator("input[name=end]").fill("21:45")
    form.locator("input[name=location]").fill("Lawn")
    form.locator("input[name=key_moment]").check()
    form.get_by_role("button", name="Save").click()

    # then the photographer's page shows it live, at the wedding's local time
    row = item_row(photographer, "Fireworks")
    expect(row.locator(".start")).to_have_text("21:30", timeout=LIVE_TIMEOUT_MS)
    expect(row.locator(".tag-key")).to_have_count(1)
    created = TimelineItem.objects.get(wedding=day.wedding, title="Fireworks")
    assert day.local(created.starts_at) == "21:30" and created.location == "Lawn"
    assert created.starts_at.astimezone(day.wedding.zone).date() == day.wedding.date

    # when the planner deletes it, confirming
    item_row(planner, "Fireworks").get_by_role("button", name="Edit").click()
    planner.locator("#delete-item").click()
    planner.get_by_role("button", name="Yes, delete it").click()

    # then it is gone from both pages, without a reload, and from the database
    expect(item_row(photographer, "Fireworks")).to_have_count(0, timeout=LIVE_TIMEOUT_MS)
    expect(item_row(planner, "Fireworks")).to_have_count(0)
    assert photographer.evaluate("window.__loadedOnce === true")
    assert wait_until(lambda: not TimelineItem.objects.filter(pk=created.pk).exists())
    assert list(
        Event.objects.filter(topic=day.topic).order_by("seq").values_list("event", flat=True)
    ) == ["timeline.item.created", "timeline.item.deleted"]

    # and the server refuses the photographer the same, through the real server's API
    with pytest.raises(urllib.error.HTTPError) as refused:
        payload = {"title": "Sparklers", "starts_at": created.starts_at.isoformat()}
        api_publish(browse.server, day.photographer, day.wedding, "timeline.item.created", payload)
    assert refused.value.code == 403


def pdf_text(pdf: bytes) -> str:
    """The text Chromium drew in a PDF: each content stream's shown strings, mapped back
    to characters through the fonts' ToUnicode tables (Skia writes glyph ids as hex)."""
    streams = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            streams.append(zlib.decompress(match.group(1)))
        except zlib.error:
            continue
    glyphs: dict[str, str] = {}
    for stream in streams:
        for block in re.findall(rb"beginbfchar(.*?)endbfchar", stream, re.S):
            for src, dst in re.findall(rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block):
                glyphs[src.decode().upper()] = bytes.fromhex(dst.decode()).decode("utf-16-be")
        for block in re.findall(rb"beginbfrange(.*?)endbfrange", stream, re.S):
            for lo, hi, dst in re.findall(
                rb"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", block
            ):
                start = int(dst, 16)
                for n in range(int(lo, 16), int(hi, 16) + 1):
                    glyphs[f"{n:0{len(lo)}X}"] = chr(start + n - int(lo, 16))
    text = []
    for stream in streams:
        for shown in re.findall(rb"\[(.*?)\]\s*TJ|<([0-9A-Fa-f]*)>\s*Tj", stream, re.S):
            hexes = re.findall(rb"<([0-9A-Fa-f]*)>", shown[0]) if shown[0] else [shown[1]]
            for run in hexes:
                run = run.decode().upper()
                text.extend(glyphs.get(run[i : i + 4], "") for i in range(0, len(run), 4))
    return "".join(text)


def squashed(text: str) -> str:
    """Text as compared with the PDF's: ligatures undone, no spaces (Skia places glyph runs
    one by one, not words), case folded (the sheet's labels are upper case)."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).casefold()


def test_print__run_sheet_on_a4_with_timeline_contacts_and_key_moments(browse, day: Day) -> None:
    # given the planner's page, an emergency open and a message in the feed
    with_phones(day)
    path = f"/weddings/{day.wedding.pk}/"
    emergency = {"kind": "medical", "text": "Guest fainted by the lake"}
    api_publish(browse.server, day.photographer, day.wedding, "emergency.raised", emergency)
    api_publish(browse.server, day.planner, day.wedding, "message.posted", {"text": "Cars due"})
    page = browse.open(day.planner, path, live=False)
    expect(page.locator(".alert.emergency")).to_have_count(1)
    expect(page.locator("#print")).to_be_visible()

    # when it is printed (print media, as Chromium's print and PDF use)
    page.emulate_media(media="print")
    page.evaluate("window.dispatchEvent(new Event('beforeprint'))")
    pdf = page.pdf(format="A4", print_background=False)

    # then the sheet keeps the timeline, the key moments and the contacts
    for kept in ("#timeline", "#key-moments", "#contacts", "#venue-contact", "h1"):
        expect(page.locator(kept)).to_be_visible()
    expect(page.locator("#key-moments li")).to_have_text(
        [re.compile(r"\d\d:\d\d Ceremony"), re.compile(r"\d\d:\d\d First dance")]
    )
    expect(page.locator("#printed")).to_contain_text("Printed at")
    # and drops the chrome and everything live: no bar, buttons, alerts, feed, now/next
    for dropped in (".topbar", "#conn", "#print", ".alert.emergency", "#nownext",
                    "#my-status", "#feed", "#composer", ".vendors-card", ".item-actions",
                    ".tag-now"):  # fmt: skip
        for element in page.locator(dropped).all():
            expect(element).to_be_hidden()
    assert page.locator("button:visible").count() == 0

    # and the PDF is A4 with that text and none of the chrome
    assert pdf.startswith(b"%PDF-")
    sizes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf)
    # (Chromium rounds A4 to whole hundredths of an inch: 8.27 × 11.7 in)
    assert sizes and all(
        abs(float(w) - A4_POINTS[0]) < 2 and abs(float(h) - A4_POINTS[1]) < 2 for w, h in sizes
    ), sizes
    text = squashed(pdf_text(pdf))
    for wanted in ("Aisha & Tom", "Run sheet", "Ceremony", "First dance", "Key moments",
                   "Juniper Weddings", PLANNER_PHONE, "Hartwell Manor, Oxford Road",
                   "No number on file", "Printed at"):  # fmt: skip
        assert squashed(wanted) in text, (wanted, text)
    for chrome in ("Sign out", "My Saturday", "Live", "Raise emergency", "Guest fainted",
                   "Cars due", "Print run sheet", "Got it", "Edit", "Online"):  # fmt: skip
        assert squashed(chrome) not in text, (chrome, text)

    # a picture of the sheet for the docs
    page.set_viewport_size({"width": 794, "height": 1123})  # A4 at 96 dpi
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "run-sheet.png"), full_page=True)
    (ARTIFACTS / "run-sheet.pdf").write_bytes(pdf)
    if os.environ.get("WEDSYNC_DOC_SCREENSHOTS") == "1":
        page.screenshot(path=str(BASE_DIR / "docs" / "screenshots" / "run-sheet.png"))
