"""Readiness of a server process: can *this process* serve, and in which mode.

``GET /readyz`` answers (PROTOCOL §9, v1.1; docs/operations.md "Probes"):

* 200 ``{"status": "ready"}``: everything answers;
* 200 ``{"status": "degraded"}``: the process serves, in a degraded mode the code is built
  for: a shared dependency is down (Redis, the channel layer: events are stored and
  acknowledged, subscribers catch up from the log; presence, limits and counts are
  local) or a Redis circuit breaker is open, or the database is unreachable while
  read-only mode is engaged (reads from the cache, writes refused by design);
* 503 ``{"status": "not_ready"}``: the process cannot serve: it is draining after SIGTERM,
  or its database does not answer through its own pool of database threads (a hung or
  exhausted pool counts) and read-only mode is not engaged.

A shared dependency never fails readiness: every host would fail it at once, and a load
balancer would take them all out of the pool, turning a Redis blip into an outage.
Liveness (``/healthz``) touches nothing.

``/readyz`` is public (load balancers probe it without credentials), so its public answer
is the status only. The details (each probe, its error text, the breakers) name hosts,
ports and internals: they go only to whoever may read ``/metrics``
(``exporter.refusal``: an allowed network, the scrape token, or a staff user by token or
admin session).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest

from core import switches
from core.breaker import breaker_states
from core.db import in_db_thread
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
    """This process's own state: draining after SIGTERM, and its circuit breakers (an open
    one means the process is serving in degraded mode: events from the log, presence
    and connection counts local)."""
    states = breaker_states()
    open_ = sorted(name for name, state in states.items() if state == "open")
    result: dict[str, Any] = {"ok": not registry.draining and not open_, "breakers": states}
    if registry.draining:
        result["error"] = "shutting down: draining connections"
    elif open_:
        result["error"] = f"circuit breaker open: {', '.join(open_)}"
    return result


async def _read_only_engaged() -> bool:
    """Whether read-only mode is on, from the cached switch; False when it cannot be read
    within the probe timeout (the database down and the switch not cached, a hung cache:
    nothing says it is on)."""
    try:
        state = await asyncio.wait_for(switches.astate("read_only_mode"), PROBE_TIMEOUT_S)
    except Exception:
        return False
    return bool(state["enabled"])


async def readiness() -> dict[str, dict[str, Any]]:
    """Run every probe concurrently; each entry says ok, or the error. The database is
    probed through the realtime database threads, the pool requests use."""
    probes: dict[str, Any] = {
        "database": in_db_thread(_database_probe),
        "channel_layer": _channel_layer_probe,
    }
    if settings.REDIS_URL:
        probes["redis"] = _redis_probe
    *results, read_only = await asyncio.gather(
        *(_run(p) for p in probes.values()), _read_only_engaged()
    )
    checks = {**dict(zip(probes, results, strict=True)), "process": _process_state()}
    checks["read_only_mode"] = {"ok": True, "enabled": read_only}
    return checks


def readiness_status(checks: dict[str, dict[str, Any]]) -> str:
    """``ready``, ``degraded`` or ``not_ready`` (the module doc)."""
    if registry.draining:
        return "not_ready"
    if not checks["database"]["ok"] and not checks["read_only_mode"]["enabled"]:
        return "not_ready"
    if all(check["ok"] for check in checks.values()):
        return "ready"
    return "degraded"


async def may_see_details(request: HttpRequest) -> bool:
    """True when the request may read /metrics (the same rule, ``exporter.refusal``)."""
    # In a thread: the rule may read the session or resolve a bearer token (the database).
    return await sync_to_async(refusal)(request) is None


async def readiness_answer(request: HttpRequest) -> tuple[dict[str, Any], int]:
    """The body and status of GET /readyz: the status for everyone, the checks only for
    those who may see them (see the module doc). The status code is the same for both:
    503 only for ``not_ready``."""
    checks = await readiness()
    status = readiness_status(checks)
    body: dict[str, Any] = {"status": status}
    if await may_see_details(request):
        body["checks"] = checks
    return body, 503 if status == "not_ready" else 200
