"""The wedding page and the stream epoch (PROTOCOL §4, v1.1), in real Chromium against a
real server: after a restore of the server's database and the bump of its epoch, a page
holding the old history reloads its state in place instead of merging the two, whether
it was offline meanwhile or connected all along.

The restore is simulated as point-in-time recovery leaves the log (the events after the
target gone, the topic's cursor back at the target), and the bump is the operator's
command in its own process, against this module's server (its cache namespace).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from realtime.epoch import EPOCH_BOUND
from tests.realtime.test_epoch import bump, restore_to
from tests.servers import Server
from tests.web.conftest import api_publish
from tests.web.test_browser import mark_window, still_same_window

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(90),
]

NAMESPACE = f"test-web-epoch-{uuid.uuid4().hex[:12]}"
# The bump reaches the server within EPOCH_BOUND; the page then reconnects after its
# back-off (a fraction of a second after a 1012) and reloads.
RELOAD_TIMEOUT_MS = int((EPOCH_BOUND + 5) * 1000)
LIVE_TIMEOUT_MS = 5000


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Server]:
    """This module's server, in a cache namespace the bump command is given too, so that
    its invalidation reaches the server at once (the command runs as the operator's)."""
    running = Server("uvicorn", CACHE_NAMESPACE=NAMESPACE)
    yield running
    running.stop()


def post(server: Server, day: Any, text: str) -> int:
    return api_publish(server, day.planner, day.wedding, "message.posted", {"text": text})["seq"]


def feed(page: Any) -> Any:
    return page.locator("#feed li.msg .text")


def test_offline_across_a_restore__the_page_reloads_the_new_history_instead_of_merging(
    browse, day
) -> None:
    # given the photographer's page, live, with two messages
    path = f"/weddings/{day.wedding.pk}/"
    context = browse.context(day.photographer)
    page = browse.page(context, path)
    mark_window(page)
    post(browse.server, day, "Before one")
    post(browse.server, day, "Before two")
    expect(feed(page)).to_have_text(["Before one", "Before two"], timeout=LIVE_TIMEOUT_MS)

    # when the phone is offline while the database is restored to seq 1, two messages are
    # posted from there (seqs 2 and 3 again), and the operator bumps the epoch
    context.set_offline(True)
    expect(page.locator("#conn")).to_have_attribute("data-state", "offline")
    restore_to(day.topic, 1)
    assert post(browse.server, day, "After two") == 2
    assert post(browse.server, day, "After three") == 3
    bump(namespace=NAMESPACE)

    # and the phone comes back online (resuming after seq 2 in the old epoch)
    context.set_offline(False)

    # then the page reloads its state, in place: the new history, nothing of the old
    expect(page.locator("#toast")).to_contain_text("Caught up", timeout=RELOAD_TIMEOUT_MS)
    expect(feed(page)).to_have_text(["Before one", "After two", "After three"])
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    assert still_same_window(page)
    # and it carries on live from there
    post(browse.server, day, "After four")
    expect(feed(page)).to_have_text(
        ["Before one", "After two", "After three", "After four"], timeout=LIVE_TIMEOUT_MS
    )


def test_connected_across_a_restore__the_bump_makes_the_page_reload(browse, day) -> None:
    # given the photographer's page, live, with two messages
    path = f"/weddings/{day.wedding.pk}/"
    page = browse.open(day.photographer, path)
    mark_window(page)
    post(browse.server, day, "Before one")
    post(browse.server, day, "Before two")
    expect(feed(page)).to_have_text(["Before one", "Before two"], timeout=LIVE_TIMEOUT_MS)

    # when the database is restored to seq 1 under the connected page and two messages are
    # posted from there: until the bump, the page's connection counts in the old history
    # (seq 2 looks like a repeat, seq 3 arrives)
    restore_to(day.topic, 1)
    post(browse.server, day, "After two")
    post(browse.server, day, "After three")
    expect(feed(page)).to_have_text(
        ["Before one", "Before two", "After three"], timeout=LIVE_TIMEOUT_MS
    )
    # and the operator bumps the epoch
    bump(namespace=NAMESPACE)

    # then the server closes the page's connection, which resumes in the old epoch and
    # reloads: the page shows the new history, in the same window
    expect(page.locator("#toast")).to_contain_text("Caught up", timeout=RELOAD_TIMEOUT_MS)
    expect(feed(page)).to_have_text(["Before one", "After two", "After three"])
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    assert still_same_window(page)
