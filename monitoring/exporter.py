"""``GET /metrics``: the Prometheus text format of every process of this host, plus the
figures that belong to the whole deployment rather than to a process.

Access (``METRICS_TOKEN``, ``METRICS_ALLOWED_NETWORKS``): a request from an allowed
network, a bearer token equal to the scrape token, or a staff user (realtime token as
bearer, or the admin session). Anything else: 401 (no or a bad credential) or 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core import metrics
from core.http import json_error
from realtime.tokens import TokenError, token_authenticate
from scaling.selectors import wedding_day_mode

from . import figures, selectors
from .models import Alert

logger = logging.getLogger(__name__)


class DeploymentCollector(Collector):
    """Figures read once per scrape from the shared state (database, Redis): the same in
    every process, so they must not be added up across processes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for part in (self._mode, self._connections, self._alerts, self._snapshot):
            try:
                yield from part()
            except Exception:  # one unreadable source must not cost the whole scrape
                logger.warning("/metrics: %s failed", part.__name__, exc_info=True)

    def _mode(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "wedsync_wedding_day_mode",
            "1 while wedding-day mode is on",
            value=1 if wedding_day_mode()["enabled"] else 0,
        )

    def _connections(self) -> Iterator[GaugeMetricFamily]:
        usage = selectors.supplier_utilisation()
        yield GaugeMetricFamily(
            "wedsync_supplier_connections_max",
            "Open connections of the busiest supplier (all processes and hosts)",
            value=usage["connections"],
        )
        yield GaugeMetricFamily(
            "wedsync_supplier_connection_limit",
            "Connections one supplier may have open now (x multiplier in wedding-day mode)",
            value=usage["limit"],
        )

    def _alerts(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "wedsync_alerts_open",
            "Unresolved alerts by rule, severity and escalation level",
            labels=["rule", "severity", "escalation"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        for row in Alert.objects.filter(resolved_at__isnull=True).values_list(
            "rule", "severity", "escalation"
        ):
            counts[row] = counts.get(row, 0) + 1
        for labels, count in sorted(counts.items()):
            family.add_metric(list(labels), count)
        yield family

    def _snapshot(self) -> Iterator[GaugeMetricFamily]:
        latest = selectors.latest_snapshot()
        if latest is not None:
            yield GaugeMetricFamily(
                "wedsync_metric_snapshot_timestamp_seconds",
                "When the minute task last stored a snapshot (beat is late when this ages)",
                value=latest.taken_at.timestamp(),
            )


def exposition() -> bytes:
    """The text format: this host's processes added up, and the deployment's figures."""
    metrics.sample_now()  # this process's gauges, fresh
    registry = figures.multiprocess_registry()
    figures.prune_dead_processes()
    registry.register(DeploymentCollector())
    return generate_latest(registry)


def _from_allowed_network(request: HttpRequest) -> bool:
    address = request.META.get("REMOTE_ADDR", "")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for network in settings.METRICS_ALLOWED_NETWORKS:
        try:
            if ip in ipaddress.ip_network(network, strict=False):
                return True
        except ValueError:
            logger.warning("METRICS_ALLOWED_NETWORKS: %r is not a network", network)
    return False


def refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the request may read /metrics, else the JSON error to answer."""
    if _from_allowed_network(request):
        return None
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        token = header[7:].strip()
        scrape = settings.METRICS_TOKEN
        if scrape and hmac.compare_digest(token.encode(), scrape.encode()):
            return None
        try:
            user: Any = token_authenticate(token)
        except TokenError:
            return _unauthenticated("the bearer token is not valid")
        return None if user.is_staff else json_error("forbidden", "staff only", 403)
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return None if user.is_staff else json_error("forbidden", "staff only", 403)
    return _unauthenticated("send the scrape token as Authorization: Bearer <token>")


def _unauthenticated(message: str) -> HttpResponse:
    response = json_error("unauthenticated", message, 401)
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics in the Prometheus text format (protected, see the module doc)."""
    if request.method not in ("GET", "HEAD"):
        return json_error("method_not_allowed", "use GET", 405)
    refused = refusal(request)
    if refused is not None:
        return refused
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
