"""The shipped Grafana dashboard and Prometheus alert rules (docs/monitoring/) in step with
the code: they query only metrics /metrics exports, pick their data source from a
variable, never add up across hosts a figure every host reports the same (the deployment's:
``max`` first), name in annotations only labels their expression keeps, and alert at the
thresholds of ``settings.MONITORING_ALERT_RULES`` in the direction of ``monitoring.rules``.

The PromQL is read with a small scanner (parentheses and aggregation clauses), enough for
these expressions; where ``promtool`` is installed the files are also checked by it, and the
rules evaluated on two hosts' series.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings
from prometheus_client.metrics import MetricWrapperBase

from core import metrics
from monitoring.exporter import DeploymentCollector
from monitoring.models import MetricSnapshot
from monitoring.rules import ABOVE, RULES

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DASHBOARD = BASE_DIR / "docs" / "monitoring" / "grafana-dashboard.json"
ALERTS = BASE_DIR / "docs" / "monitoring" / "prometheus-alerts.yml"

_METRIC = re.compile(r"\b(wedsync_[a-z0-9_]+)\b")
_AGGREGATION = re.compile(
    r"\b(sum|max|min|avg|count|group|topk|bottomk|quantile|stddev|stdvar)\s*"
    r"(?:(by|without)\s*\(([^)]*)\)\s*)?\("
)
_COMPARISON = re.compile(r"(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)")
_LABEL_REF = re.compile(r"\$labels\.([a-zA-Z_]\w*)")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def all_exprs() -> list[str]:
    return dashboard_exprs() + [rule["expr"] for rule in alert_rules()]


# --- what /metrics exports -----------------------------------------------------------------


def _series(name: str, kind: str) -> set[str]:
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def process_series() -> set[str]:
    """The series of the instruments of core/metrics.py (every process's, added up)."""
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            names |= _series(value._name, value._type)
    return names


def deployment_series() -> set[str]:
    """The series /metrics reads from the deployment's shared state, once per scrape."""
    MetricSnapshot.objects.create()  # the beat's heartbeat is exported once there is one
    return {family.name for family in DeploymentCollector().collect()}


@pytest.mark.django_db
def test_deployment_series__all_read_at_scrape():
    # the figures that are the same on every host (so never summed across hosts)
    assert deployment_series() == {
        "wedsync_wedding_day_mode",
        "wedsync_supplier_connections_max",
        "wedsync_supplier_connection_limit",
        "wedsync_alerts_open",
        "wedsync_metric_snapshot_timestamp_seconds",
    }


@pytest.mark.django_db
def test_dashboard_and_rules__query_only_exported_metrics():
    exported = process_series() | deployment_series()
    used = {name for expr in all_exprs() for name in _METRIC.findall(expr)}
    assert used, "no wedsync_ metric found in docs/monitoring/"
    assert used - exported == set()
    # and the HTTP request metrics are on the dashboard
    assert {"wedsync_http_requests_total", "wedsync_http_request_duration_seconds_bucket"} <= used


# --- the dashboard's data source -------------------------------------------------------------


def test_dashboard__every_query_uses_the_datasource_variable():
    board = dashboard()
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["name"], variable["query"]) == ("datasource", "prometheus")
    assert "__inputs" not in board and "${DS_" not in DASHBOARD.read_text()
    for panel in board["panels"]:
        sources = [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]
        assert all(s == {"type": "prometheus", "uid": "${datasource}"} for s in sources), panel
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


# --- PromQL shape --------------------------------------------------------------------------------


def _opening_paren(expr: str, pos: int) -> int | None:
    """The position of the innermost unclosed ``(`` before ``pos``."""
    depth = 0
    for i in range(pos - 1, -1, -1):
        if expr[i] == ")":
            depth += 1
        elif expr[i] == "(":
            if depth == 0:
                return i
            depth -= 1
    return None


def _word_before(expr: str, pos: int) -> str:
    """The function or aggregation name that the ``(`` at ``pos`` belongs to ("" for a
    plain group), stepping over an aggregation's ``by (...)`` / ``without (...)``."""
    head = expr[:pos].rstrip()
    if head.endswith(")"):  # max by (rule) (...): the clause's own parentheses
        start = _opening_paren(head, len(head) - 1)
        assert start is not None
        head = head[:start].rstrip()
        clause = re.search(r"(by|without)$", head)
        if clause is None:
            return ""
        head = head[: clause.start()].rstrip()
    word = re.search(r"([a-z_]+)$", head)
    return word.group(1) if word else ""


def aggregated_by(expr: str, pos: int) -> str:
    """The innermost function or aggregation applied to what stands at ``pos``."""
    while (paren := _opening_paren(expr, pos)) is not None:
        if word := _word_before(expr, paren):
            return word
        pos = paren
    return ""


def _depth_at(expr: str, pos: int) -> int:
    return expr[:pos].count("(") - expr[:pos].count(")")


def kept_labels(expr: str) -> set[str] | None:
    """The labels the alert's series keep: those of its outermost aggregation's ``by``;
    None when it does not aggregate (every label of the input is kept)."""
    found = [m for m in _AGGREGATION.finditer(expr) if _depth_at(expr, m.start()) == 0]
    found = found or list(_AGGREGATION.finditer(expr))
    if not found:
        return None
    _, clause, labels = found[0].groups()
    if clause == "without":
        return None
    kept = {label.strip() for label in (labels or "").split(",") if label.strip()}
    return kept - {"le"} if expr.lstrip().startswith("histogram_quantile") else kept


def threshold(expr: str) -> tuple[str, float]:
    """The first comparison with a number outside any parentheses: the alert's threshold."""
    for match in _COMPARISON.finditer(expr):
        if _depth_at(expr, match.start()) == 0:
            return match.group(1), float(match.group(2))
    raise AssertionError(f"no threshold in {expr!r}")


def test_scanner__reads_aggregations_and_thresholds():
    expr = "sum(max by (rule, severity) (wedsync_alerts_open{rule='x'})) >= 0.5 and up > 1"
    assert aggregated_by(expr, expr.index("wedsync_alerts_open")) == "max"
    assert aggregated_by("time() - max(a_b)", 13) == "max"
    assert aggregated_by("sum((a_b))", 5) == "sum"
    assert kept_labels("count by (instance) (max by (instance, name) (x) == 2) >= 1") == {
        "instance"
    }
    assert kept_labels("up == 0") is None
    assert threshold(expr) == (">=", 0.5)
    assert threshold("count by (i) (x == 2) >= 3") == (">=", 3.0)


@pytest.mark.django_db
def test_deployment_wide_gauges__never_summed_across_hosts():
    deployment = deployment_series()
    for expr in all_exprs():
        for match in _METRIC.finditer(expr):
            if match.group(1) in deployment:
                assert aggregated_by(expr, match.start()) == "max", (match.group(1), expr)


def test_rules__annotations_and_labels_name_only_labels_the_expression_keeps():
    for rule in alert_rules():
        texts = [*rule.get("annotations", {}).values(), *rule.get("labels", {}).values()]
        referred = {name for text in texts for name in _LABEL_REF.findall(str(text))}
        kept = kept_labels(rule["expr"])
        if kept is not None:
            assert referred <= kept, (rule["alert"], referred - kept)


# --- thresholds ----------------------------------------------------------------------------------


def test_rules__thresholds_mirror_the_settings_in_their_direction():
    by_key: dict[str, dict[str, tuple[str, float]]] = {}
    in_app: set[str] = set()
    for rule in alert_rules():
        key = rule.get("labels", {}).get("rule")
        if key is None:
            continue
        assert key in settings.MONITORING_ALERT_RULES, rule["alert"]
        if f'wedsync_alerts_open{{rule="{key}"}}' in rule["expr"]:
            in_app.add(key)  # evaluated by the application; Prometheus reads its alert
            continue
        by_key.setdefault(key, {})[rule["labels"]["severity"]] = threshold(rule["expr"])
    # every in-app rule has its Prometheus rules: at both levels, or through the app's alert
    assert set(by_key) | in_app == set(settings.MONITORING_ALERT_RULES)
    for key, levels in by_key.items():
        expected = settings.MONITORING_ALERT_RULES[key]
        operator = ">=" if RULES[key].direction == ABOVE else "<="
        assert levels == {
            "warning": (operator, expected["warning"]),
            "critical": (operator, expected["critical"]),
        }, key


# --- promtool, where installed ---------------------------------------------------------------


def _promtool() -> str:
    tool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if tool is None:
        reason = "promtool is not installed (Debian's prometheus package has it)"
        if os.environ.get("CI") == "true":  # .ci/run provides it: CI never skips this
            pytest.fail(reason)
        pytest.skip(reason)
    return tool


def test_promtool__checks_the_rules_and_the_dashboards_queries(tmp_path: Path):
    promtool = _promtool()
    queries = tmp_path / "dashboard-queries.yml"
    records = [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(dashboard_exprs())
    ]
    queries.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": records}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS), str(queries)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool__two_hosts_report_one_deployment(tmp_path: Path):
    # given two hosts reporting the same open alert, and a breaker open on one of them
    promtool = _promtool()

    def series(name: str, labels: str, **by_host: str) -> list[dict[str, str]]:
        return [
            {"series": f'{name}{{{labels},job="wedsync",instance="{host}:8000"}}', "values": v}
            for host, v in by_host.items()
        ]

    overdue = 'rule="ack_overdue",severity="warning",escalation="management"'
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    *series("wedsync_alerts_open", overdue, app1="1x10", app2="1x10"),
                    *series(
                        "wedsync_circuit_breaker_state", 'name="presence"', app1="2x10", app2="0x10"
                    ),
                ],
                "alert_rule_test": [
                    {  # then one wedding is overdue, not two
                        "eval_time": "5m",
                        "alertname": "WedSyncAckOverdue",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "rule": "ack_overdue"},
                                "exp_annotations": {
                                    "summary": "1 wedding(s) with an ack_required event "
                                    "unacknowledged for 5 min (planners notified)"
                                },
                            }
                        ],
                    },
                    {  # and the escalation counts it once, naming its rule
                        "eval_time": "5m",
                        "alertname": "WedSyncAlertEscalated",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "rule": "ack_overdue"},
                                "exp_annotations": {
                                    "summary": "alert ack_overdue unacknowledged and escalated"
                                },
                            }
                        ],
                    },
                    {  # and the breaker alert names the host it is open on
                        "eval_time": "5m",
                        "alertname": "WedSyncCircuitBreakerOpen",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "rule": "circuit_breaker_open",
                                    "instance": "app1:8000",
                                },
                                "exp_annotations": {
                                    "summary": "1 Redis circuit breaker(s) open on app1:8000 "
                                    "(degraded mode)"
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    spec = tmp_path / "tests.yml"
    spec.write_text(json.dumps(tests))
    result = subprocess.run(
        [promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
