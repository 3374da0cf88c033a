"""The wedding page's first load on a bad phone connection stays within a budget.

A vendor of a demo Saturday (``seed_demo``) opens the wedding page in Chromium with the
network throttled by CDP (``Network.emulateNetworkConditions``, SLOW_3G below) against
a server in production shape (hashed static files served compressed by WhiteNoise).
What the page's own requests bring over the wire (CDP ``Network.loadingFinished``
``encodedDataLength``: headers and compressed body) plus the WebSocket's frames until the
connection is live is counted against BUDGET_BYTES, and the page's requests against
BUDGET_REQUESTS. A second visit (warm cache) must take no static file from the network.
Timings are printed (``-s``), never asserted. docs/web.md "Fast on a bad phone".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model

from tests.web.conftest import PHONE
from weddings.demo import seed_demo

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
]

# 400 kbit/s each way and a 400 ms round trip, as CDP takes them (bytes per second, ms).
SLOW_3G = {
    "offline": False,
    "latency": 400,
    "downloadThroughput": 400_000 / 8,
    "uploadThroughput": 400_000 / 8,
}
# The budget of a first load (measured figures and how to change them: docs/web.md).
BUDGET_BYTES = 64_000
BUDGET_REQUESTS = 12


@dataclass
class Load:
    """What one page load took from the network, recorded from the page's CDP events."""

    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    cached: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    frames: list[int] = field(default_factory=list)

    def listen(self, cdp: Any) -> None:
        cdp.on("Network.responseReceived", self._response)
        cdp.on("Network.loadingFinished", self._finished)
        cdp.on("Network.requestServedFromCache", lambda e: self.cached.add(e["requestId"]))
        cdp.on("Network.loadingFailed", lambda e: self.failed.update({e["requestId"]: e}))
        cdp.on(
            "Network.webSocketFrameReceived",
            lambda e: self.frames.append(len(e["response"]["payloadData"].encode())),
        )

    def _response(self, event: dict[str, Any]) -> None:
        response = event["response"]
        self.responses[event["requestId"]] = {
            "id": event["requestId"],
            "url": response["url"],
            "status": response["status"],
            "type": event.get("type"),
            "encoding": response.get("headers", {}).get("content-encoding")
            or response.get("headers", {}).get("Content-Encoding"),
            "cache_control": response.get("headers", {}).get("cache-control")
            or response.get("headers", {}).get("Cache-Control"),
            "from_cache": response.get("fromDiskCache")
            or response.get("fromPrefetchCache")
            or event["requestId"] in self.cached,
            "from_worker": response.get("fromServiceWorker", False),
        }

    def _finished(self, event: dict[str, Any]) -> None:
        self.sizes[event["requestId"]] = int(event["encodedDataLength"])

    def network(self) -> list[dict[str, Any]]:
        """The responses that came over the network, each with the bytes it took."""
        rows = []
        for request_id, row in self.responses.items():
            if row["from_cache"] or row["from_worker"] or row["url"].startswith("data:"):
                continue
            rows.append({**row, "bytes": self.sizes.get(request_id, 0)})
        return rows

    @property
    def bytes(self) -> int:
        return sum(row["bytes"] for row in self.network()) + sum(self.frames)

    def report(self, title: str) -> str:
        lines = [title]
        for row in self.responses.values():
            where = "cache" if row["from_cache"] else "worker" if row["from_worker"] else "net"
            lines.append(
                f"  {where:6} {row['status']} {row['encoding'] or '-':5} "
                f"{self.sizes.get(row['id'], 0):7} "
                f"{urlsplit(row['url']).path}"
            )
        lines.append(f"  websocket frames received: {len(self.frames)}, {sum(self.frames)} B")
        return "\n".join(lines)


def open_throttled(context: Any, path: str) -> tuple[Any, Load, dict[str, float]]:
    """A page of ``context`` at ``path`` on SLOW_3G; its load record and timings (s)."""
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    load = Load()
    load.listen(cdp)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", SLOW_3G)
    started = time.monotonic()
    page.goto(path, wait_until="commit", timeout=30_000)
    page.wait_for_selector("#timeline li", state="visible", timeout=30_000)
    run_sheet = time.monotonic() - started
    page.wait_for_selector("#conn[data-state=live]", timeout=30_000)
    live = time.monotonic() - started
    return page, load, {"run_sheet": run_sheet, "live": live}


@pytest.fixture
def vendor_page(browse: Any) -> tuple[Any, str]:
    """A vendor (not the planner) of a demo wedding: a signed-in context, the page's path."""
    demo = seed_demo(weddings=1, vendors_per_wedding=6, with_staff=False)
    wedding = demo["weddings"][0]
    vendor = get_user_model().objects.get(pk=wedding["suppliers"][1]["users"][0]["user_id"])
    return browse.context(vendor, viewport=PHONE), f"/weddings/{wedding['id']}/"


def test_first_load__stays_within_the_budget_and_a_second_takes_no_static_file_again(
    vendor_page,
) -> None:
    context, path = vendor_page

    # when a phone with nothing cached opens the wedding page on a slow connection
    first, load, timings = open_throttled(context, path)

    # then what it downloads until the run sheet shows and the connection is live fits
    network = load.network()
    print(load.report(f"first load: {len(network)} requests, {load.bytes} B, {timings}"))
    assert not load.failed, f"requests failed: {load.failed}"
    assert load.bytes <= BUDGET_BYTES, load.report(f"{load.bytes} B > {BUDGET_BYTES} B")
    assert len(network) <= BUDGET_REQUESTS, load.report(
        f"{len(network)} requests > {BUDGET_REQUESTS}"
    )
    # and every static file came compressed, with a far-future cache lifetime
    for row in network:
        if urlsplit(row["url"]).path.startswith("/static/"):
            assert row["encoding"] in ("gzip", "br"), row
            assert "max-age=315360000" in (row["cache_control"] or ""), row

    # when the vendor opens the page again (its service worker installed meanwhile)
    first.close()
    _, again, timings = open_throttled(context, path)

    # then no static file is downloaded again
    print(again.report(f"second load: {len(again.network())} requests, {again.bytes} B, {timings}"))
    downloaded = [
        row["url"] for row in again.network() if urlsplit(row["url"]).path.startswith("/static/")
    ]
    assert not downloaded, again.report(f"downloaded again: {downloaded}")
