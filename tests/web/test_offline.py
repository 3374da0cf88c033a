"""The offline wedding page in real Chromium against a real server (production shape).

The service worker (/sw.js) keeps the page, its last state and its shell; the outbox is
kept in IndexedDB. The phone "loses signal" with ``context.set_offline(True)``, which
fails every request of the context, the worker's included. One server and one browser
serve the module (tests/web/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from playwright.sync_api import expect

from realtime.models import Event
from tests.factories import make_user
from tests.web.conftest import BASE_DIR, PHONE, api_publish, screenshot, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def in_chromium(test: Any) -> Any:
    """The marks of a test that drives Chromium."""
    return pytest.mark.browser(pytest.mark.slow(test))


AS_OF = re.compile(r"^as of \d\d:\d\d$")

# The seq of the state the page kept in Cache Storage (null: nothing kept yet).
_KEPT_SEQ = """async (url) => {
  const kept = await caches.match(url);
  return kept ? (await kept.json()).seq : null;
}"""

# The page's outbox as kept in IndexedDB (outbox-store.js): every record.
_KEPT_OUTBOX = """() => new Promise((resolve, reject) => {
  const open = indexedDB.open("wedsync");
  open.onerror = () => reject(open.error);
  open.onsuccess = () => {
    const db = open.result;
    if (!db.objectStoreNames.contains("outbox")) { db.close(); resolve([]); return; }
    const all = db.transaction("outbox").objectStore("outbox").getAll();
    all.onsuccess = () => { db.close(); resolve(all.result); };
    all.onerror = () => reject(all.error);
  };
})"""


def open_kept(browse: Any, user: Any, path: str) -> tuple[Any, Any]:
    """A phone's context and its page at ``path``, live and kept for offline use."""
    context = browse.context(user, viewport=PHONE)
    page = browse.page(context, path)
    page.wait_for_selector("body[data-offline-ready]")
    return context, page


def test_service_worker__served_from_the_root_with_its_versioned_shell(server) -> None:
    # when the worker's script is fetched from the production-shaped server
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/sw.js", timeout=10) as r:
        headers, body = r.headers, r.read().decode()

    # then it is JavaScript that every check revalidates, under the site's strict policy
    assert headers["Content-Type"].startswith("text/javascript")
    assert headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    # and it names the shell by the content-hashed names of this release
    config = re.match(
        r'self\.WEDSYNC_OFFLINE = \{"version": "([0-9a-f]{16})", "shell": \[(.*)\]\};', body
    )
    assert config, body[:200]
    shell = re.findall(r'"([^"]+)"', config.group(2))
    assert any(re.fullmatch(r"/static/web/wedding\.[0-9a-f]{12}\.js", url) for url in shell)
    assert any(re.fullmatch(r"/static/web/outbox-store\.[0-9a-f]{12}\.js", url) for url in shell)
    for url in shell:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{url}", timeout=10) as r:
            assert r.status == 200, url


@in_chromium
def test_offline_reload__shows_the_kept_run_sheet_as_of_its_time_and_offline(browse, day) -> None:
    # given the photographer's phone on the wedding page, kept for offline use
    path = f"/weddings/{day.wedding.pk}/"
    context, page = open_kept(browse, day.photographer, path)
    # and a status set elsewhere afterwards, applied live (and kept by the page)
    published = api_publish(browse.server, day.planner, day.wedding, "vendor.status",
                            {"supplier_id": day.planner_co.pk, "status": "setting_up"})  # fmt: skip
    planners = page.locator(f'#vendors li[data-supplier="{day.planner_co.pk}"] .pill')
    expect(planners).to_contain_text("Setting up")
    state_url = f"/weddings/{day.wedding.pk}/state"
    assert wait_until(lambda: (page.evaluate(_KEPT_SEQ, state_url) or 0) >= published["seq"], 10)
    expect(page.locator("#as-of")).to_be_hidden()

    # when the signal goes and the page is reloaded
    context.set_offline(True)
    response = page.reload()

    # then the worker serves the kept copy: the run sheet, the offline indicator, "as of"
    assert response.from_service_worker
    expect(page.locator("#conn")).to_have_attribute("data-state", "offline")
    expect(page.locator("#conn")).to_have_text("Offline")
    as_of = page.locator("#as-of")
    expect(as_of).to_be_visible()
    expect(as_of).to_have_text(AS_OF)
    # (in the wedding's zone: the browser is in Tokyo)
    assert as_of.inner_text()[-5:] in {day.local(t) for t in recent_minutes()}
    titles = page.locator("#timeline li.item .title")
    expect(titles).to_have_text(list(day.items))
    # and the state is the last one the page had, not the older one of the kept HTML
    expect(planners).to_contain_text("Setting up")
    shot = screenshot(page, "wedding-offline-phone")
    if os.environ.get("WEDSYNC_DOC_SCREENSHOTS") == "1":
        shutil.copyfile(shot, BASE_DIR / "docs" / "screenshots" / "wedding-offline.png")

    # when the signal is back, the page goes live again and says nothing of "as of"
    context.set_offline(False)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(as_of).to_be_hidden()


def recent_minutes() -> list[Any]:
    """This minute and the two before it (the page kept its state moments ago)."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    return [now - dt.timedelta(minutes=n) for n in range(3)]


@in_chromium
def test_offline_tap__survives_a_reload_and_is_delivered_exactly_once(browse, day) -> None:
    # given the photographer's phone on the wedding page, kept for offline use, offline
    path = f"/weddings/{day.wedding.pk}/"
    context, page = open_kept(browse, day.photographer, path)
    context.set_offline(True)
    expect(page.locator("#conn")).to_have_attribute("data-state", "offline")

    # when they tap "Arrived" with no signal
    page.locator("#my-status button[data-status=arrived]").click()
    expect(page.locator("#outbox")).to_have_text("1 waiting to send")
    assert wait_until(lambda: len(page.evaluate(_KEPT_OUTBOX)) == 1)
    [kept] = page.evaluate(_KEPT_OUTBOX)
    key = kept["key"]
    assert kept["event"] == "vendor.status" and kept["payload"]["status"] == "arrived"

    # and the page is reloaded, still offline (leaving it does not ask to stay)
    page.reload()

    # then the tap is still waiting, with the key it was made with
    expect(page.locator("#conn")).to_have_attribute("data-state", "offline")
    expect(page.locator("#outbox")).to_have_text("1 waiting to send")
    expect(page.locator("#my-status button[data-status=arrived]")).to_have_class(
        re.compile("waiting")
    )
    assert [item["key"] for item in page.evaluate(_KEPT_OUTBOX)] == [key]
    assert not Event.objects.filter(idempotency_key=key).exists()

    # when the signal is back
    context.set_offline(False)

    # then it is delivered once, under its key, and the device keeps nothing more
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#outbox")).to_be_hidden()
    mine = page.locator(f'#vendors li[data-supplier="{day.photo_co.pk}"] .pill')
    expect(mine).to_contain_text("Arrived")
    assert wait_until(lambda: page.evaluate(_KEPT_OUTBOX) == [])
    # and a page opened afterwards sends nothing again
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#outbox")).to_be_hidden()
    sent = Event.objects.filter(topic=day.topic, event="vendor.status", actor_user=day.photographer)
    assert list(sent.values_list("idempotency_key", flat=True)) == [key]


@in_chromium
def test_sign_out__leaves_no_offline_copy_or_outbox_on_the_device(browse, day) -> None:
    # given a page kept for offline use, with its outbox's database on the device
    _, page = open_kept(browse, day.photographer, f"/weddings/{day.wedding.pk}/")
    databases = "indexedDB.databases().then(all => all.map(d => d.name))"
    assert "wedsync" in page.evaluate(databases)
    assert page.evaluate("caches.keys()") != []

    # when the user signs out
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url("**/accounts/login/")

    # then nothing of theirs is left: no kept page, state or shell, no outbox, no worker
    assert page.evaluate("caches.keys()") == []
    assert "wedsync" not in page.evaluate(databases)
    assert page.evaluate("navigator.serviceWorker.getRegistrations().then(r => r.length)") == 0


def test_sign_in__clears_the_device_when_another_user_used_it_last() -> None:
    # given two users of one phone
    first, second = make_user(), make_user()
    for user in (first, second):
        user.set_password("pw")
        user.save(update_fields=["password"])
    phone = Client(REMOTE_ADDR="203.0.113.9")

    def sign_in(user: Any) -> Any:
        response = phone.post(reverse("web:login"), {"username": user.username, "password": "pw"})
        assert response.status_code == 302
        phone.post(reverse("web:logout"))
        return response

    # when the first signs in on it for the first time, then again, then the second
    fresh, again, other = sign_in(first), sign_in(first), sign_in(second)

    # then a device no one is known to have used is cleared, and one the user used last
    # is not (their unsent actions stay); another user's sign-in clears it
    assert fresh["Clear-Site-Data"] == '"cache", "storage"'
    assert "Clear-Site-Data" not in again
    assert other["Clear-Site-Data"] == '"cache", "storage"'
    # and the marker does not name the user: an opaque digest, one per user
    marker = again.cookies["wedsync_device"].value
    assert re.fullmatch(r"[0-9a-f]{32}", marker), marker
    assert marker != other.cookies["wedsync_device"].value
    assert again.cookies["wedsync_device"]["httponly"]


def test_service_worker__version_changes_with_any_shell_file(monkeypatch) -> None:
    # given the files of a release
    from web import views

    files = {
        name: f"// {name} v1".encode() for name in (*views.OFFLINE_SHELL, views.SERVICE_WORKER)
    }
    monkeypatch.setattr(views, "_static_bytes", files.__getitem__)

    def version() -> str:
        head = views._build_service_worker().split(b";\n", 1)[0]
        return json.loads(head.removeprefix(b"self.WEDSYNC_OFFLINE = "))["version"]

    # when one file of the shell changes, then the worker itself
    first = version()
    files["web/app.css"] = b"/* v2 */"
    second = version()
    files[views.SERVICE_WORKER] = b"// sw v2"
    third = version()

    # then each is another version: another cache name, the old one deleted on activation
    assert len({first, second, third}) == 3
