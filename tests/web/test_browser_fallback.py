"""The web app when the WebSocket cannot open: the realtime client falls back to the
Server-Sent Events stream (clients/js/realtime.js, docs/client.md), in real Chromium
against a real server.

The page's WebSockets fail before they open, as behind a proxy that refuses the upgrade:
an init script stands in for ``WebSocket`` (a routed WebSocket in Playwright opens in the
page, which is not what a refused upgrade looks like). Everything else is real: the
ticket, the stream, the publishes over HTTP, the server.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from realtime.models import Event
from tests.web.conftest import api_publish, wait_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
]

LIVE_TIMEOUT_MS = 5000

# Every WebSocket fails before it opens (error, then close 1006) while
# ``window.__wsBlocked``; counted in ``window.__wsAttempts``.
BLOCK_WEBSOCKETS = """
(() => {
  const Real = window.WebSocket;
  window.__wsBlocked = true;
  window.__wsAttempts = 0;
  function Blockable(url, protocols) {
    window.__wsAttempts += 1;
    if (!window.__wsBlocked) return new Real(url, protocols);
    const refused = { readyState: 0, send() {}, close() {} };
    setTimeout(() => {
      refused.readyState = 3;
      if (refused.onerror) refused.onerror(new Event("error"));
      if (refused.onclose) refused.onclose({ code: 1006, reason: "" });
    }, 20);
    return refused;
  }
  Object.assign(Blockable, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = Blockable;
})();
"""


def test_websocket_refused__live_over_sse_publishes_over_http_then_back(browse, day) -> None:
    # given a vendor's page whose WebSockets are refused
    context = browse.context(day.photographer)
    context.add_init_script(BLOCK_WEBSOCKETS)
    page = browse.page(context, f"/weddings/{day.wedding.pk}/")  # waits for "live"
    conn = page.locator("#conn")
    expect(conn).to_have_attribute("data-transport", "sse")
    assert page.evaluate("window.__wsAttempts") >= 3

    # when the planner posts a message (an integration, over the HTTP API)
    api_publish(browse.server, day.planner, day.wedding, "message.posted", {"text": "Cake is in"})

    # then it reaches the page live over the stream
    feed = page.locator("#feed")
    expect(feed).to_contain_text("Cake is in", timeout=LIVE_TIMEOUT_MS)

    # and the page's own message goes over the HTTP API, and comes back on the stream
    page.locator("#message-text").fill("Photographer here")
    page.locator("#composer button[type=submit]").click()
    expect(feed).to_contain_text("Photographer here", timeout=LIVE_TIMEOUT_MS)
    assert wait_until(
        lambda: Event.objects.filter(
            topic=day.topic, actor_user_id=day.photographer.pk, payload__text="Photographer here"
        ).exists()
    )

    # when the WebSocket gets through again and the network changes
    page.evaluate("window.__wsBlocked = false; window.dispatchEvent(new Event('online'))")

    # then the page moves back to it, still live, and misses nothing meanwhile
    expect(conn).to_have_attribute("data-transport", "websocket", timeout=LIVE_TIMEOUT_MS)
    expect(conn).to_have_attribute("data-state", "live")
    api_publish(browse.server, day.planner, day.wedding, "message.posted", {"text": "First dance"})
    expect(feed).to_contain_text("First dance", timeout=LIVE_TIMEOUT_MS)
    seqs: list[Any] = page.evaluate(
        "[...document.querySelectorAll('#feed [data-seq]')].map((el) => Number(el.dataset.seq))"
    )
    assert len(seqs) == len(set(seqs)), seqs  # nothing shown twice
