"""Liveness and readiness endpoints (PROTOCOL §9)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from .health import readiness


async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process is up and serving; touches nothing else."""
    return JsonResponse({"status": "ok"})


async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database, Redis and the channel layer answer (503 when one does not)."""
    checks = await readiness()
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )
