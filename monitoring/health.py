"""Readiness probes of the parts a server process needs: database, Redis, channel layer,
and the process itself (draining, circuit breakers).

``GET /readyz`` is public (load balancers probe it without credentials), so its public
answer is the status only: 200 ``{"status": "ready"}`` or 503 ``{"status": "not_ready"}``.
The details (each probe, its error text, the breakers) name hosts, ports and internals:
they go only to whoever may read ``/metrics`` (``exporter.refusal``: an allowed network,
the scrape token, or a staff user by token or admin session).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest

from core.breaker import breaker_states
from core.redis import shared_client
from realtime.node import process as registry

from .exporter import refusal

# A probe that takes longer than this counts as failed: a readiness check must answer
# quickly even when a dependency hangs.
PROBE_TIMEOUT_S = 2.0


def _database_probe() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _redis_probe() -> None:

    # The process's shared pool: readiness checks what requests will use.
    await shared_client(settings.REDIS_URL).ping()


async def _channel_layer_probe() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    # A round trip through the layer. The pub/sub layer is at-most-once and only delivers
    # to a subscribed reader, so the reader starts first and the probe is re-sent until it
    # arrives (the caller's timeout bounds the loop).
    channel = await layer.new_channel(prefix="readyz")
    marker = uuid.uuid4().hex
    reader = asyncio.ensure_future(layer.receive(channel))
    try:
        while True:
            await layer.send(channel, {"type": "readyz.probe", "marker": marker})
            done, _ = await asyncio.wait({reader}, timeout=0.1)
            if done:
                break
        if reader.result().get("marker") != marker:
            raise RuntimeError("channel layer returned another message")
    finally:
        reader.cancel()


async def _run(probe: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe(), PROBE_TIMEOUT_S)
    except Exception as exc:  # any failure means not ready; report it
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


def _process_state() -> dict[str, Any]:
    """This process's own state: draining after SIGTERM, and its Redis breakers (an open
    one means the process is serving in degraded mode: events from the log, presence
    and connection counts local)."""
    states = breaker_states()
    open_ = sorted(name for name, state in states.items() if state == "open")
    result: dict[str, Any] = {"ok": not registry.draining and not open_, "breakers": states}
    if registry.draining:
        result["error"] = "shutting down: draining connections"
    elif open_:
        result["error"] = f"Redis circuit breaker open: {', '.join(open_)}"
    return result


async def readiness() -> dict[str, dict[str, Any]]:
    """Run every probe concurrently; each entry says ok, or the error."""
    probes: dict[str, Any] = {
        "database": database_sync_to_async(_database_probe),
        "channel_layer": _channel_layer_probe,
    }
    if settings.REDIS_URL:
        probes["redis"] = _redis_probe
    results = await asyncio.gather(*(_run(p) for p in probes.values()))
    return {**dict(zip(probes, results, strict=True)), "process": _process_state()}


async def may_see_details(request: HttpRequest) -> bool:
    """True when the request may read /metrics (the same rule, ``exporter.refusal``)."""
    # In a thread: the rule may read the session or resolve a bearer token (the database).
    return await sync_to_async(refusal)(request) is None


async def readiness_answer(request: HttpRequest) -> tuple[dict[str, Any], int]:
    """The body and status of GET /readyz: the status for everyone, the checks only for
    those who may see them (see the module doc). The status code is the same for both."""
    checks = await readiness()
    ready = all(check["ok"] for check in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready"}
    if await may_see_details(request):
        body["checks"] = checks
    return body, 200 if ready else 503
