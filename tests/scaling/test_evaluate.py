"""The scaling evaluation: decide, persist only what changed (or a new notice), apply
through the actuator, broadcast on ``ops``; and the wedding-day mode automation."""

from __future__ import annotations

import datetime as dt
import shlex
import sys

import pytest
from django.test import Client
from django.urls import reverse

from monitoring.models import MetricSnapshot
from realtime.models import Event
from scaling.decisions import ScalingPolicy
from scaling.models import ScalingDecision, WeddingDayModeChange
from scaling.selectors import wedding_day_mode
from scaling.services import scaling_evaluate, wedding_day_mode_set
from scaling.tasks import evaluate_scaling
from tests.factories import make_booking, make_supplier, make_user, make_wedding

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(30)]

UTC = dt.UTC
# Saturday 13 June 2026, 14:30 in London (BST, UTC+1).
NOW = dt.datetime(2026, 6, 13, 13, 30, tzinfo=UTC)
PYTHON = shlex.quote(sys.executable)


def _ops_events(name: str) -> list[Event]:
    return list(Event.objects.filter(topic="ops", event=name).order_by("seq"))


def _load(connections: int, at: dt.datetime = NOW) -> MetricSnapshot:
    return MetricSnapshot.objects.create(
        taken_at=at - dt.timedelta(minutes=1), connections=connections
    )


def test_scaling_evaluate__first_run_records_the_baseline_then_stays_quiet():
    # when: nothing booked, no metrics
    first = scaling_evaluate(now=NOW)
    again = scaling_evaluate(now=NOW + dt.timedelta(minutes=1))

    # then: one row (the policy's minimums), and no "no change" row after it
    assert first is not None and again is None
    assert ScalingDecision.objects.count() == 1
    assert (first.asgi_processes, first.celery_workers, first.connection_limit) == (2, 1, 3000)
    assert first.actuator == "log" and first.actuator_status == ScalingDecision.Status.APPLIED
    assert first.inputs["now"] == NOW.isoformat()
    assert len(_ops_events("scaling.decided")) == 1


def test_scaling_evaluate__a_load_above_capacity_scales_out_applies_and_broadcasts():
    # given
    scaling_evaluate(now=NOW - dt.timedelta(hours=1))
    _load(3000)

    # when
    row = scaling_evaluate(now=NOW)

    # then: 3000 connections with 30 % headroom need 4 processes of 1000
    assert row.action == ScalingDecision.Action.SCALE_OUT
    assert (row.previous_asgi_processes, row.asgi_processes) == (2, 4)
    assert row.connection_limit == 4 * 1500
    assert "3000 connections now need 4 process(es)" in row.reason
    assert "ASGI processes: 2 → 4" in row.reason
    assert row.inputs["current"]["connections"] == 3000
    assert row.actuator_status == ScalingDecision.Status.APPLIED
    assert "asgi=4" in row.actuator_output
    event = _ops_events("scaling.decided")[-1]
    assert event.priority == Event.Priority.NORMAL
    assert event.payload["id"] == row.pk
    assert event.payload["asgi"] == 4
    assert event.payload["previous"]["asgi"] == 2
    assert event.payload["reason"] == row.reason


def test_scaling_evaluate__a_stale_snapshot_is_not_current_load():
    _load(3000, at=NOW - dt.timedelta(minutes=30))
    row = scaling_evaluate(now=NOW)
    assert row.asgi_processes == 2
    assert row.inputs["metrics_taken_at"] is None


def test_scaling_evaluate__runs_the_command_actuator(settings):
    # given
    settings.SCALING_ACTUATOR = "command"
    settings.SCALING_COMMAND_TEMPLATE = (
        f"{PYTHON} -c 'import sys; print(\"scaled to\", *sys.argv[1:])' {{asgi}} {{workers}}"
    )
    _load(3000)

    # when
    row = scaling_evaluate(now=NOW)

    # then
    assert row.actuator == "command"
    assert row.actuator_status == ScalingDecision.Status.APPLIED
    assert row.actuator_returncode == 0
    assert row.actuator_output == f"scaled to 4 {row.celery_workers}"


def test_scaling_evaluate__a_failed_apply_is_recorded_alerted_and_retried(settings, caplog):
    # given
    settings.SCALING_ACTUATOR = "command"
    settings.SCALING_COMMAND_TEMPLATE = (
        f"{PYTHON} -c 'import sys; print(\"forbidden\", file=sys.stderr); sys.exit(1)'"
    )
    _load(3000)

    # when
    failed = scaling_evaluate(now=NOW)
    retried = scaling_evaluate(now=NOW + dt.timedelta(seconds=30))

    # then: recorded on the decision, logged at ERROR, broadcast as critical
    assert failed.actuator_status == ScalingDecision.Status.FAILED
    assert failed.actuator_returncode == 1
    assert failed.actuator_output == "forbidden"
    errors = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "scaling.services"]
    assert errors and "forbidden" in errors[0].getMessage()
    event = _ops_events("scaling.decided")[0]
    assert event.priority == Event.Priority.CRITICAL
    assert event.payload["status"] == "failed"
    # and: a failed apply is not capacity, so the next evaluation tries again
    assert retried is not None
    assert retried.previous_asgi_processes == 2 and retried.asgi_processes == 4
    # and: the monitoring alert is open, at warning after two failures in a row
    from monitoring.models import Alert

    alert = Alert.objects.get(rule="scaling_actuator_failed", resolved_at__isnull=True)
    assert alert.severity == "warning"
    assert alert.value == 2
    # when: the actuator works again, the alert resolves at once
    settings.SCALING_COMMAND_TEMPLATE = f"{PYTHON} -c 'print(1)'"
    scaling_evaluate(now=NOW + dt.timedelta(seconds=60))
    alert.refresh_from_db()
    assert alert.resolved_at is not None


def test_scaling_evaluate__posts_a_24_hour_notice_once_per_peak():
    # given: tomorrow's wedding needs more than runs now (small processes make 10
    # vendors a peak worth a notice)
    policy = ScalingPolicy(connections_per_process=10, connection_limit_per_process=15)
    wedding = make_wedding(date=dt.date(2026, 6, 14), ceremony_time=dt.time(13, 0))
    for _ in range(10):
        make_booking(supplier=make_supplier(), wedding=wedding)
    scaling_evaluate(now=NOW - dt.timedelta(hours=12), policy=policy)  # peak > 24 h away

    # when
    noticed = scaling_evaluate(now=NOW, policy=policy)
    later = scaling_evaluate(now=NOW + dt.timedelta(minutes=5), policy=policy)

    # then
    assert noticed is not None and later is None
    assert noticed.action == ScalingDecision.Action.HOLD
    assert noticed.actuator_status == ScalingDecision.Status.SKIPPED
    assert noticed.notice_peak_at.date() == dt.date(2026, 6, 14)
    assert "notice:" in noticed.reason
    payload = _ops_events("scaling.decided")[-1].payload
    assert payload["notice"]["asgi"] > 2


def test_evaluate_scaling_task__stores_a_decision():
    evaluate_scaling.apply()
    assert ScalingDecision.objects.count() == 1


# --- wedding-day mode automation ------------------------------------------------------


def _wedding_at_two_pm():
    """Alex & Sam, ceremony at 14:00 London (13:00 UTC) on NOW's day; no timeline, so
    the window is 11:00 to 23:00 UTC."""
    return make_wedding(date=NOW.date(), ceremony_time=dt.time(14, 0))


def test_automation__switches_on_in_a_window_and_off_after():
    # given
    wedding = _wedding_at_two_pm()

    # when
    scaling_evaluate(now=NOW)
    during = wedding_day_mode()
    scaling_evaluate(now=NOW + dt.timedelta(minutes=1))  # already on: nothing new
    scaling_evaluate(now=dt.datetime(2026, 6, 13, 23, 30, tzinfo=UTC))
    after = wedding_day_mode()

    # then
    assert during["enabled"] is True and during["changed_by"] is None
    assert during["reason"] == (
        f"automatic: 1 wedding(s) in their window: #{wedding.pk} Alex & Sam — 2026-06-13"
    )
    assert after["enabled"] is False and after["changed_by"] is None
    assert WeddingDayModeChange.objects.count() == 2


def test_automation__switches_on_before_the_ceremony_not_earlier():
    _wedding_at_two_pm()
    scaling_evaluate(now=dt.datetime(2026, 6, 13, 10, 59, tzinfo=UTC))
    assert wedding_day_mode()["enabled"] is False
    scaling_evaluate(now=dt.datetime(2026, 6, 13, 11, 0, tzinfo=UTC))
    assert wedding_day_mode()["enabled"] is True


def test_automation__never_overrides_a_person_who_switched_it_on():
    # given: a person switched it on for the day; the wedding is over
    _wedding_at_two_pm()
    boss = make_user(is_staff=True)
    wedding_day_mode_set(enabled=True, reason="busy Saturday, keep it on", user=boss)

    # when
    scaling_evaluate(now=dt.datetime(2026, 6, 13, 23, 30, tzinfo=UTC))

    # then
    assert wedding_day_mode()["enabled"] is True
    assert WeddingDayModeChange.objects.count() == 1


def test_automation__never_overrides_a_person_who_switched_it_off():
    # given: a person switched it off while a wedding is in its window
    _wedding_at_two_pm()
    boss = make_user(is_staff=True)
    wedding_day_mode_set(enabled=False, reason="false alarm, test wedding", user=boss)

    # when
    scaling_evaluate(now=NOW)

    # then
    assert wedding_day_mode()["enabled"] is False
    assert WeddingDayModeChange.objects.count() == 1


def test_beat__evaluates_every_minute_and_late_runs_expire(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["scaling-evaluate"]
    assert entry["task"] == evaluate_scaling.name == "scaling.tasks.evaluate_scaling"
    assert entry["schedule"] == 60
    assert entry["options"]["expires"] == settings.SCALING_EVALUATE_INTERVAL - 5 == 55


def test_admin__lists_decisions_with_their_reason_read_only():
    # given
    _load(3000)
    row = scaling_evaluate(now=NOW)
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    client.force_login(make_user(is_staff=True, is_superuser=True))

    # when
    listing = client.get(reverse("admin:scaling_scalingdecision_changelist"))
    detail = client.get(reverse("admin:scaling_scalingdecision_change", args=[row.pk]))
    add = client.get(reverse("admin:scaling_scalingdecision_add"))

    # then
    assert listing.status_code == 200
    assert "3000 connections now need 4 process(es)" in listing.content.decode()
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
    assert add.status_code == 403


def test_scaling_evaluate__a_failed_baseline_is_retried_until_applied(settings):
    # given: the first apply fails, with nothing to scale
    settings.SCALING_ACTUATOR = "command"
    settings.SCALING_COMMAND_TEMPLATE = f"{PYTHON} -c 'raise SystemExit(1)'"
    failed = scaling_evaluate(now=NOW)

    # when: the command works again
    settings.SCALING_COMMAND_TEMPLATE = f"{PYTHON} -c 'print({{asgi}})'"
    applied = scaling_evaluate(now=NOW + dt.timedelta(minutes=1))
    quiet = scaling_evaluate(now=NOW + dt.timedelta(minutes=2))

    # then
    assert failed.actuator_status == ScalingDecision.Status.FAILED
    assert applied.actuator_status == ScalingDecision.Status.APPLIED
    assert applied.actuator_output == "2"
    assert quiet is None


def test_scaling_policy__from_settings(settings):
    from scaling.selectors import scaling_policy

    settings.SCALING_CONNECTIONS_PER_PROCESS = 500
    settings.SCALING_HEADROOM = 0.5
    settings.SCALING_MIN_ASGI, settings.SCALING_MAX_ASGI = 3, 9
    settings.SCALING_PRESCALE_HOURS = 3

    policy = scaling_policy()

    assert (policy.connections_per_process, policy.connection_limit_per_process) == (500, 750)
    assert (policy.headroom, policy.min_asgi, policy.max_asgi) == (0.5, 3, 9)
    assert policy.prescale_lead == dt.timedelta(hours=3)


def test_scaling_evaluate__busy_server_cpu_in_the_snapshot_scales_out():
    # given: the baseline, then a minute snapshot with a server process at 90 % CPU
    scaling_evaluate(now=NOW)
    MetricSnapshot.objects.create(
        taken_at=NOW + dt.timedelta(minutes=4), connections=100, server_cpu=0.9
    )

    # when
    row = scaling_evaluate(now=NOW + dt.timedelta(minutes=5))

    # then: the CPU rule adds processes and says why
    assert row is not None and row.asgi_processes > row.previous_asgi_processes
    assert "CPU 90%" in row.reason
