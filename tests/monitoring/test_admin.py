"""Monitoring in the Django admin: thresholds edited in place, alerts acknowledged and
resolved through the services, history read-only."""

from __future__ import annotations

import pytest
from django.test import Client

from monitoring import services
from monitoring.models import Alert, AlertRule, MetricSnapshot
from monitoring.rules import RULES
from realtime.models import Event
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(make_user(is_staff=True, is_superuser=True))
    return client


def test_alert_rules__listed_from_settings_and_thresholds_editable(admin_client) -> None:
    page = admin_client.get("/admin/monitoring/alertrule/")

    assert page.status_code == 200
    assert AlertRule.objects.count() == len(RULES)
    rule = AlertRule.objects.get(key="error_rate")
    response = admin_client.post(
        f"/admin/monitoring/alertrule/{rule.pk}/change/",
        {"enabled": "on", "warning": "0.05", "critical": "0.2"},
    )
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.warning, rule.critical) == (0.05, 0.2)
    assert admin_client.get("/admin/monitoring/alertrule/add/").status_code == 403


def test_alert_actions__acknowledge_then_resolve_notify_ops(admin_client) -> None:
    alert, _ = services.alert_observe("error_rate", 0.5, message="errors")
    url = "/admin/monitoring/alert/"

    admin_client.post(url, {"action": "acknowledge", "_selected_action": [alert.pk]})
    alert.refresh_from_db()
    assert alert.status == "acknowledged"

    admin_client.post(url, {"action": "resolve", "_selected_action": [alert.pk]})
    alert.refresh_from_db()
    assert alert.status == "resolved"
    names = list(Event.objects.filter(topic="ops").order_by("seq").values_list("event", flat=True))
    assert names == ["alert.opened", "alert.acknowledged", "alert.resolved"]


def test_history__read_only_and_index_links_the_dashboard(admin_client) -> None:
    snapshot = MetricSnapshot.objects.create(connections=3)

    assert admin_client.get("/admin/monitoring/metricsnapshot/").status_code == 200
    detail = admin_client.post(
        f"/admin/monitoring/metricsnapshot/{snapshot.pk}/change/", {"connections": "9"}
    )
    assert detail.status_code == 403
    assert Alert.objects.count() == 0
    index = admin_client.get("/admin/").content.decode()
    assert 'href="/admin/monitoring/dashboard/"' in index


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("error_rate", {"errors"}),  # the rule
        ("supplier:42", {"busy"}),  # the subject
        ("kestrel", {"busy"}),  # the message
        ("delivery", {"slow"}),  # the rule and the message of the same alert
        ("nothing-like-this", set()),
    ],
)
def test_alert_search__finds_the_matching_alerts_only(admin_client, query, found) -> None:
    # given three open alerts of different rules, subjects and messages
    alerts = {
        "errors": services.alert_observe("error_rate", 0.5, message="error replies at 50 %")[0],
        "busy": services.alert_observe(
            "connection_utilisation",
            0.99,
            subject="supplier:42",
            message="Kestrel Photography at 99 % of its connection limit",
        )[0],
        "slow": services.alert_observe(
            "delivery_latency_p95", 3.0, message="p95 delivery took 3.0 s"
        )[0],
    }

    # when
    response = admin_client.get("/admin/monitoring/alert/", {"q": query})

    # then
    assert response.status_code == 200
    assert {alert.pk for alert in response.context["cl"].result_list} == {
        alerts[name].pk for name in found
    }
