"""Where scaling reads the measured load (scaling.readings): monitoring's reader, plugged
in by its ready(); without one, no readings and decisions from the calendar alone."""

from __future__ import annotations

import datetime as dt

import pytest

from monitoring.models import MetricSnapshot
from monitoring.selectors import SnapshotReader
from scaling import readings
from scaling.selectors import current_metrics, demand_inputs

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 6, 13, 15, 0, tzinfo=dt.UTC)


def _snapshot(at: dt.datetime, connections: int, *, partial: bool | None = None) -> MetricSnapshot:
    totals = {} if partial is None else {"peers": {"read": 1, "partial": partial}}
    return MetricSnapshot.objects.create(
        taken_at=at, connections=connections, deliveries_per_s=2.5, server_cpu=0.4, totals=totals
    )


def test_readings__monitoring_plugged_in_its_snapshot_reader():
    assert isinstance(readings._reader, SnapshotReader)


def test_current_metrics__the_latest_snapshot_within_five_minutes():
    _snapshot(NOW - dt.timedelta(minutes=4), 300)
    _snapshot(NOW - dt.timedelta(minutes=1), 420)

    current, taken_at = current_metrics(now=NOW)

    assert current.connections == 420 and current.cpu == pytest.approx(0.4)
    assert taken_at == NOW - dt.timedelta(minutes=1)


def test_partial_snapshots__left_out_of_the_current_load_and_the_history():
    # given: a complete reading, then two taken while a host of METRICS_PEERS did not
    # answer (they count the others only), then a complete one from a single host
    _snapshot(NOW - dt.timedelta(minutes=4), 900, partial=False)
    _snapshot(NOW - dt.timedelta(minutes=3), 400, partial=True)
    _snapshot(NOW - dt.timedelta(minutes=2), 410, partial=True)
    _snapshot(NOW - dt.timedelta(minutes=1, seconds=30), 880)

    # then: the current load is the latest complete reading, not the partial drop
    current, taken_at = current_metrics(now=NOW)
    assert (current.connections, taken_at) == (880, NOW - dt.timedelta(minutes=1, seconds=30))
    # and the demand model learns from complete readings only
    _, observations = demand_inputs(now=NOW, history=dt.timedelta(hours=1))
    assert [o.connections for o in observations] == [900, 880]

    # when: every reading of the last minutes is partial
    later = NOW + dt.timedelta(minutes=30)
    _snapshot(later - dt.timedelta(minutes=2), 100, partial=True)
    _snapshot(later - dt.timedelta(minutes=1), 120, partial=True)
    current, taken_at = current_metrics(now=later)

    # then: no current reading at all rather than a partial one
    assert (current.connections, taken_at) == (0, None)


def test_readings__without_a_reader_there_are_none(monkeypatch):
    # given snapshots, but no reader plugged in (monitoring not installed)
    _snapshot(NOW - dt.timedelta(minutes=1), 420)
    monkeypatch.setattr(readings, "_reader", None)

    # then the decision starts from zero and the demand model learns from nothing
    current, taken_at = current_metrics(now=NOW)
    assert (current.connections, taken_at) == (0, None)
    _, observations = demand_inputs(now=NOW, history=dt.timedelta(days=1))
    assert observations == []
