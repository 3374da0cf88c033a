"""The overload scenario's machinery (bench/loadtest/overload.py): its parameters, its
report, and a tiny run against a real server; never timing."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from bench.loadtest.overload import MIX, class_of
from bench.loadtest.report import render
from bench.loadtest.scenarios import Overload, ScenarioError, scenario_from_options


def test_overload__defaults_and_bounds() -> None:
    scenario = scenario_from_options("overload", {"weddings": 2})

    assert isinstance(scenario, Overload)
    assert (scenario.weddings, scenario.factor, scenario.per_wedding) == (2, 1.5, 8)
    with pytest.raises(ScenarioError, match="--per-wedding must be between 4"):
        Overload(per_wedding=3)  # a planner, a raiser, a member and an observer at least
    with pytest.raises(ScenarioError, match="--factor must be between"):
        Overload(factor=0)


def test_overload__mix_has_every_class_and_events_map_to_them() -> None:
    assert {class_of(e) for e in ("emergency.raised", "timeline.item.created", "x")} == {
        "emergency",
        "timeline",
        "ordinary",
    }
    assert (MIX.count("emergency"), MIX.count("timeline"), MIX.count("ordinary")) == (2, 2, 16)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_overload_smoke__every_class_published_delivered_and_reported(tmp_path) -> None:
    # given a real server started by the command, on this run's database (and Redis)
    report_path = tmp_path / "overload.json"
    out = io.StringIO()

    # when a tiny overload runs: 2 weddings of 4 vendors, 0.5 s of calibration, 1 s of mix
    # (budgets raised: a raiser and a member per wedding could not take 1.5x a server's
    # capacity within them)
    budgets = [
        f"{name}={value}"
        for budget in (
            "REALTIME_CRITICAL_PUBLISH",
            "REALTIME_USER_PUBLISH",
            "REALTIME_PUBLISH",
            "REALTIME_FRAME",
            "REALTIME_USER_FRAME",
            "REALTIME_USER_PUBLISH_BYTES",
        )
        for name, value in ((f"{budget}_RATE", 10**8), (f"{budget}_BURST", 10**8))
    ]
    call_command(
        "loadtest", "overload", "--weddings", "2", "--per-wedding", "4", "--calibrate", "0.5",
        "--duration", "1", "--drain-timeout", "10", "--json", str(report_path),
        *[arg for pair in budgets for arg in ("--server-env", pair)],
        stdout=out, stderr=io.StringIO(),
    )  # fmt: skip

    # then the capacity was measured, each class was published without error and reached
    # the observers, and the report shows the classes
    report = json.loads(report_path.read_bytes())
    assert report["capacity_per_s"] > 0
    assert report["offered_per_s"] == pytest.approx(report["capacity_per_s"] * 1.5, rel=0.01)
    for name in ("emergency", "timeline", "ordinary"):
        stats = report["classes"][name]
        assert stats["sent"] > 0, name
        assert stats["errors"] == {}, (name, stats["errors"])
        assert stats["delivery_latency"]["count"] == stats["ok"], name
    assert "delivery p99 ms" in render(report)
