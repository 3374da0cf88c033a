"""Liveness and readiness endpoints (PROTOCOL §9), and the staff dashboard page."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse

from .health import readiness_answer
from .selectors import metrics_overview


async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process is up and serving; touches nothing else."""
    return JsonResponse({"status": "ok"})


async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness of this process: 200 ready or degraded (a shared dependency down), 503
    when it cannot serve (draining, or its database unreachable outside read-only mode).
    The probes' details only for who may read /metrics (monitoring/health.py)."""
    body, status = await readiness_answer(request)
    return JsonResponse(body, status=status)


def dashboard(request: HttpRequest) -> HttpResponse:
    """The staff dashboard, an admin page (``admin_view`` in wedsync/urls.py keeps
    everyone else out): starts from the metrics API's body, then follows ``ops`` live."""
    context = {
        **admin.site.each_context(request),
        "title": "Live dashboard",
        "overview": metrics_overview(),
        "api_url": reverse("performance-metrics"),
    }
    return render(request, "monitoring/dashboard.html", context)
