"""``manage.py soak``: saturday-peak's load with faults, then the proofs (docs/benchmarks.md,
"Saturday soak").

The proofs are tested on made-up figures first, to show each can fail; the end-to-end test
runs the real command, shortened (60 s of load, 100 receivers, every fault once,
evaluations every 3 s with no clear damping) against its own Redis and server on this
run's PostgreSQL, and asserts the report's figures, not only its verdict: every
acknowledged publish delivered once and in order to every receiver through a worker kill,
a Redis restart, terminated database connections and a network stall; each fault really
injected; the Redis restart's alert raised and resolved; no server process past its
memory bound. Never timing.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError

from bench.netns import missing_requirements
from bench.soak.faults import KINDS, schedule
from bench.soak.memory import MIB, RssTracker, Series
from bench.soak.proofs import alert_proof, delivery_proof

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# --- the schedule -------------------------------------------------------------------------


def test_schedule__spreads_the_faults_each_between_two_evaluations() -> None:
    faults = schedule(list(KINDS), 2, warmup=100, last_at=800, redis_down=75, evaluate_every=20)

    assert [f.kind for f in faults] == list(KINDS) * 2
    # every 100 s from the warm-up, each moved on to the middle between two evaluations
    assert [f.at_s for f in faults] == [110, 210, 310, 410, 510, 610, 710, 810]


def test_schedule__a_redis_outage_shorter_than_an_evaluation_expects_no_alert() -> None:
    long, short = (
        schedule(["redis"], 1, warmup=10, last_at=10, redis_down=down, evaluate_every=60)[0]
        for down in (75, 20)
    )

    assert long.expected_alerts == ("circuit_breaker_open",)
    assert short.expected_alerts == ()
    assert "may or may not" in short.why_none


# --- the proofs ---------------------------------------------------------------------------


def _result(**deliveries: int) -> dict:
    totals = {"streams": 4, "expected": 40, "received": 40, "missing": 0, "duplicates": 0,
              "out_of_order": 0, **deliveries}  # fmt: skip
    return {
        "connections": {"attempted": 4, "succeeded": 4},
        "deliveries": totals,
        "receivers": {"resets": 0, "reconnects": 2},
        "acked": {"wedding:1": list(range(1, 11))},
        "starts": {"wedding:1": 0},
        "finals": {"wedding:1": 10},
        "publishes": {"ok": 10},
    }


def test_delivery_proof__holds_for_every_seq_once_in_order() -> None:
    proof = delivery_proof(_result())

    assert proof["passed"], proof["failures"]
    assert (proof["acknowledged"], proof["stored"], proof["stored_not_acknowledged"]) == (10, 10, 0)


def test_delivery_proof__fails_on_loss_duplicates_disorder_and_a_seq_acked_twice() -> None:
    result = _result(missing=1, duplicates=2, out_of_order=3)
    result["acked"]["wedding:1"][-1] = 9  # two publishes told they got seq 9

    failures = delivery_proof(result)["failures"]

    assert "deliveries missing: 1" in failures
    assert "deliveries duplicates: 2" in failures
    assert "deliveries out of order: 3" in failures
    assert "1 seqs acknowledged twice" in failures


def _fault(kind: str, started: float, expected: tuple[str, ...] = ()) -> dict:
    return {"kind": kind, "at_s": started, "started": started, "skipped": None,
            "expected_alerts": list(expected), "why_no_alert": None}  # fmt: skip


def _alert(rule: str, opened: float, resolved: float | None) -> dict:
    return {"id": int(opened), "rule": rule, "severity": "critical", "opened": opened,
            "resolved": resolved}  # fmt: skip


def test_alert_proof__attributes_each_alert_to_the_fault_before_it() -> None:
    faults = [_fault("worker", 100), _fault("redis", 200, ("circuit_breaker_open",))]
    alerts = [_alert("circuit_breaker_open", 230, 300)]

    proof = alert_proof(faults, alerts, ended_wall=400)

    assert proof["passed"], proof["failures"]
    worker, redis = proof["by_fault"]
    assert worker["raised"] == []
    assert [(a["rule"], a["opened_after_s"], a["resolved_after_s"]) for a in redis["raised"]] == [
        ("circuit_breaker_open", 30, 100)
    ]


def test_alert_proof__fails_when_an_expected_alert_is_missing_or_one_stays_open() -> None:
    faults = [_fault("redis", 200, ("circuit_breaker_open",)), _fault("stall", 300)]
    alerts = [_alert("circuit_breaker_open", 310, None)]  # after the next fault: not its own

    failures = alert_proof(faults, alerts, ended_wall=400)["failures"]

    assert failures == [
        "redis at 200s raised no circuit_breaker_open alert",
        "alert circuit_breaker_open (#310) still open at the end",
    ]


def test_memory_verdict__growth_past_the_bound_fails_and_short_lives_are_not_judged() -> None:
    tracker = RssTracker()
    tracker.series = {
        1: Series(1, "worker", [(0, 100 * MIB), (10, 120 * MIB), (20, 200 * MIB)]),
        2: Series(2, "worker", [(0, 100 * MIB), (10, 120 * MIB), (20, 150 * MIB)]),
        3: Series(3, "worker", [(0, 100 * MIB), (5, 100 * MIB)]),  # replaced late
    }

    rows = {r["pid"]: r for r in tracker.verdict(warmup=10, pct=25, floor_mib=40)}

    assert (rows[1]["growth_mib"], rows[1]["bound_mib"], rows[1]["within"]) == (80, 40, False)
    assert (rows[2]["growth_mib"], rows[2]["within"]) == (30, True)
    assert rows[3]["judged"] is False


# --- end to end ---------------------------------------------------------------------------


@pytest.mark.slow(seconds=70)
@pytest.mark.postgres
@pytest.mark.timeout(240)
@pytest.mark.django_db(transaction=True)
def test_soak__every_acknowledged_event_arrives_through_every_fault(tmp_path) -> None:
    # given the soak's own Redis, and network namespaces for the stall (CI: required)
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("CI=true but redis-server is not installed", pytrace=False)
        pytest.skip("redis-server is not installed")
    missing = missing_requirements()
    if missing and IN_CI:
        pytest.fail(f"CI=true but the stall needs namespaces: {'; '.join(missing)}", pytrace=False)
    report_path = tmp_path / "soak.json"

    # when the command runs 60 s of load with every fault once
    try:
        call_command(
            "soak", "--duration", "60", "--connections", "100", "--weddings", "5",
            "--rate", "10", "--warmup", "8", "--redis-down", "6", "--evaluate-every", "3",
            "--clear-minutes", "0", "--sample-every", "2", "--progress-every", "5",
            "--json", str(report_path), stdout=io.StringIO(), stderr=io.StringIO(),
        )  # fmt: skip
    except CommandError as exc:  # a failed proof: the report says which
        assert report_path.exists(), exc
    report = json.loads(report_path.read_bytes())

    # then each fault was really injected (the stall only where namespaces can be made)
    faults = {f["kind"]: f for f in report["faults"]}
    assert list(faults) == list(KINDS)
    assert faults["worker"]["detail"]["replaced_after_s"] is not None, faults["worker"]
    assert faults["redis"]["detail"]["down_s"] >= 6
    assert faults["postgres"]["detail"]["terminated"] >= 1, faults["postgres"]
    if missing:
        assert faults["stall"]["skipped"], faults["stall"]
    else:
        assert faults["stall"]["skipped"] is None and faults["stall"]["detail"]["held_s"] == 2

    # and every acknowledged publish reached every receiver once and in order, the killed
    # worker's receivers included (they reconnected with since)
    delivery = report["proofs"]["delivery"]
    assert delivery["receivers"] == 100
    assert delivery["acknowledged"] > 0
    assert delivery["expected"] >= 100 * delivery["acknowledged"] // 5  # 20 receivers a topic
    assert (delivery["missing"], delivery["duplicates"], delivery["out_of_order"]) == (0, 0, 0)
    assert delivery["reconnects"] > 0
    assert delivery["passed"], delivery["failures"]

    # and the Redis restart opened circuit_breaker_open, the terminated connections
    # error_rate, each resolved afterwards; no alert is left open
    alerts = report["proofs"]["alerts"]
    rows = {row["kind"]: row for row in alerts["by_fault"]}
    for kind, rule in (("redis", "circuit_breaker_open"), ("postgres", "error_rate")):
        raised = [a for a in rows[kind]["raised"] if a["rule"] == rule]
        assert raised and raised[0]["resolved_after_s"] is not None, rows[kind]
    assert rows["worker"]["why_none"], rows["worker"]  # none by design, and said why
    assert alerts["unresolved"] == []
    assert alerts["passed"], alerts["failures"]

    # and no server process grew past its bound (supervisor and both workers judged)
    memory = report["proofs"]["memory"]
    judged = [p for p in memory["processes"] if p["judged"]]
    assert len(judged) >= 3, memory["processes"]
    assert all(p["within"] for p in judged), judged
    assert report["passed"]


@pytest.mark.parametrize("command", ["soak", "loadtest"])
def test_help__lists_every_option(command):
    # given the command as manage.py loads it
    parser = load_command_class("bench", command).create_parser("manage.py", command)

    # when its --help is rendered (a bare "%" in a help text once made it raise)
    text = parser.format_help()

    # then
    assert "--json" in text
    if command == "soak":
        assert "% of the baseline" in text and "--faults" in text
