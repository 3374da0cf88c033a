"""/metrics of two real server processes sharing one metrics directory: their figures add
up, whichever process is scraped, and a crashed process's gauges stop counting."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import Server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def scrape(server: Server) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a server's /metrics (loopback is an
    allowed network with DEBUG)."""
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def files(directory: str, pattern: str) -> list[Path]:
    return list(Path(directory).glob(pattern))


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def publish(server: Server, token: str, wedding_id: int, text: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/weddings/{wedding_id}/events",
        data=json.dumps({"event": "message.posted", "payload": {"text": text}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.status == 201


async def wait_for(server: Server, check: Any, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = await asyncio.to_thread(scrape, server)
        if check(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.2)


@database_sync_to_async
def seed() -> dict[str, Any]:
    wedding = make_wedding()
    vendors = [make_user() for _ in range(3)]
    for vendor in vendors:
        make_booking(supplier=make_supplier(users=(vendor,)), wedding=wedding)
    return {"wedding": wedding, "tokens": [token_issue(user=v) for v in vendors]}


async def subscribed(server: Server, token: str, topic: str) -> Any:
    ws = await connect(f"{server.ws_url}?token={token}")
    await ws.send(json.dumps({"type": "subscribe", "ref": "1", "topics": {topic: {}}}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply["status"] == "ok", reply
    return ws


@pytest.fixture
def servers(tmp_path: Path):
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "METRICS_SAMPLE_INTERVAL": "0.2"}
    running = [Server("uvicorn", **shared), Server("uvicorn", **shared)]
    yield running
    for server in running:
        server.stop()


async def test_metrics__two_processes_add_up_and_a_crashed_one_stops_counting(servers) -> None:
    # given: two server processes on one metrics directory, 2 clients on A and 1 on B
    a, b = servers
    day = await seed()
    topic = day["wedding"].topic
    sockets = [
        await subscribed(a, day["tokens"][0], topic),
        await subscribed(a, day["tokens"][1], topic),
        await subscribed(b, day["tokens"][2], topic),
    ]
    published = {"event": "message.posted", "priority": "normal"}

    try:
        # when: two messages are published through A and one through B
        for server, token, text in ((a, 0, "one"), (a, 1, "two"), (b, 2, "three")):
            await asyncio.to_thread(publish, server, day["tokens"][token], day["wedding"].pk, text)

        # then: A's /metrics counts both processes' connections, subscriptions, publishes
        def all_in(samples: dict) -> bool:
            return (
                value(samples, "wedsync_ws_connections") == 3
                and value(samples, "wedsync_ws_subscriptions") == 3
                and value(samples, "wedsync_events_published_total", **published) == 3
            )

        from_a = await wait_for(a, all_in)
        assert value(from_a, "wedsync_ws_connections") == 3
        assert value(from_a, "wedsync_ws_subscriptions") == 3
        assert value(from_a, "wedsync_events_published_total", **published) == 3
        # and B says the same: one host, one directory
        assert all_in(await asyncio.to_thread(scrape, b))

        # when: B crashes (SIGKILL: no chance to say goodbye)
        b.kill()

        # then: its connection stops counting at once; what it published still counts
        after = await asyncio.to_thread(scrape, a)
        assert value(after, "wedsync_ws_connections") == 2
        assert value(after, "wedsync_events_published_total", **published) == 3

        # and a graceful stop (SIGTERM) takes A's live gauges with it, counters stay
        for ws in sockets[:2]:
            await ws.close()
        await asyncio.to_thread(a.stop)
        assert not files(a.metrics_dir, f"gauge_live*_{a.proc.pid}.db")
        assert files(a.metrics_dir, f"counter_{a.proc.pid}.db")
    finally:
        for ws in sockets:
            ws.close_timeout = 1  # B's client has nobody to close with
            await ws.close()
