"""URL routes of the whole site."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views import defaults

from core.http import json_error
from monitoring import api as monitoring_api
from monitoring import benchmark as monitoring_benchmark
from monitoring import exporter as monitoring_exporter
from monitoring import views as monitoring_views
from scaling import api as scaling_api

urlpatterns = [
    # Before admin/: the staff dashboard is an admin page of its own (monitoring/views.py).
    path(
        "admin/monitoring/dashboard/",
        admin.site.admin_view(monitoring_views.dashboard),
        name="monitoring-dashboard",
    ),
    path("admin/", admin.site.urls),
    path("healthz", monitoring_views.healthz, name="healthz"),
    path("readyz", monitoring_views.readyz, name="readyz"),
    path("metrics", monitoring_exporter.metrics_view, name="metrics"),
    path(
        "api/performance/realtime/metrics",
        monitoring_api.metrics_view,
        name="performance-metrics",
    ),
    path(
        "api/performance/realtime/benchmark",
        monitoring_benchmark.benchmark_view,
        name="performance-benchmark",
    ),
    path("api/scaling/desired", scaling_api.desired_view, name="scaling-desired"),
    path("", include("realtime.urls")),
    path("", include("push.urls")),  # Web Push (ADR 0032)
    # The vendor web app: "/" is My Saturday (web/urls.py).
    path("", include("web.urls")),
]


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    """JSON for the API (a bad Host, an oversized upload ...), Django's page elsewhere."""
    if _is_api(request):
        return json_error("bad_request", "the request could not be understood", 400)
    return defaults.bad_request(request, exception)


def handler403(request: HttpRequest, exception: Exception) -> HttpResponse:
    """JSON for the API, Django's page elsewhere."""
    if _is_api(request):
        return json_error("forbidden", "not allowed", 403)
    return defaults.permission_denied(request, exception)


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    """JSON for the API, Django's page elsewhere."""
    if _is_api(request):
        return json_error("not_found", "no such resource", 404)
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    """JSON for the API (never a traceback), Django's page elsewhere."""
    if _is_api(request):
        return json_error("internal", "the server failed to handle this request", 500)
    return defaults.server_error(request)
