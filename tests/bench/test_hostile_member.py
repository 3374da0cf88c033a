"""``loadtest hostile-member``: one booked vendor floods its wedding (docs/security.md, "No
member can flood a wedding").

The parameter and budget arithmetic is tested on its own; the end-to-end test runs the real
command against a real server process for 15 s and asserts what must hold however fast
the machine is: no member misses an event, the flooder is limited and what it got stored
stays within its budgets over the flood's length, the wedding's real history survives the
flood and retention, and the overdue-acknowledgement check opens one alert for the
wedding. Never timing: the members' latency is a figure of the benchmark (docs/benchmarks.md).
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from bench.loadtest.flooder import filler
from bench.loadtest.hostile import flooder_limited, limits_report
from bench.loadtest.scenarios import (
    FLOOD_HTTP_KINDS,
    FLOOD_WS_KINDS,
    HostileMember,
    ScenarioError,
    scenario_from_options,
)

# --- parameters ----------------------------------------------------------------------------


def test_scenario__defaults_are_the_issue_s_figures() -> None:
    scenario = HostileMember()

    assert (scenario.members, scenario.duration, scenario.rate) == (40, 60.0, 2.0)
    assert scenario.flood_connections == 20  # the per-user connection limit
    assert scenario.flood_kinds == FLOOD_WS_KINDS + FLOOD_HTTP_KINDS
    assert (scenario.weddings, scenario.per_wedding) == (1, 41)  # the members and the flooder


def test_scenario__flood_kinds_parse_in_the_flooder_s_order() -> None:
    scenario = scenario_from_options("hostile-member", {"flood_kinds": "http_history, ack"})

    assert scenario.flood_kinds == ("ack", "http_history")
    with pytest.raises(ScenarioError, match="--flood-kinds: unknown 'shout'"):
        HostileMember(flood_kinds="message,shout")
    with pytest.raises(ScenarioError, match="at least one"):
        HostileMember(flood_kinds=" , ")


def test_scenario__out_of_range_names_the_option() -> None:
    with pytest.raises(ScenarioError, match=r"--members must be between 1 and 400"):
        HostileMember(members=0)
    with pytest.raises(ScenarioError, match=r"--rate must be between"):
        HostileMember(rate=50)  # one planner connection stays below the server's limit
    with pytest.raises(ScenarioError, match=r"--processes \(3\) is more than --members \(2\)"):
        HostileMember(members=2, processes=3)


def test_filler__is_the_longest_text_a_message_may_have() -> None:
    text = filler("c1-7")

    assert len(text) == 4000
    assert text.startswith("c1-7 ")


# --- budgets -------------------------------------------------------------------------------


def _flood(seconds: float, **ok: int) -> dict:
    kinds = {kind: {"sent": n + 5, "ok": n, "rate_limited": 5} for kind, n in ok.items()}
    return {
        "seconds": seconds,
        "kinds": kinds,
        "ws": {"replayed_events": 300},
        "http": {"replayed_events": 200},
    }


def test_limits__each_budget_is_burst_plus_rate_times_the_flood_s_length() -> None:
    # given a 10 s flood against budgets of 20/s burst 40 (publish), 1/s burst 5 (critical)
    budgets = {"publish": (20.0, 40.0), "critical": (1.0, 5.0), "ack": (10.0, 100.0)}
    stored = {"events": {"message.posted": 240, "emergency.raised": 17}}

    rows = {r["budget"]: r for r in limits_report(_flood(10.0, ack=201), stored, budgets, 900)}

    # then the bound is burst + rate x seconds (+ one token of slack), and each is checked
    assert (rows["publish"]["observed"], rows["publish"]["bound"]) == (240, 241.0)
    assert rows["publish"]["within"]
    assert (rows["critical"]["observed"], rows["critical"]["bound"]) == (17, 16.0)
    assert not rows["critical"]["within"]
    assert rows["ack"]["observed"] == 201 and rows["ack"]["within"]


def test_limits__a_replay_may_leave_the_budget_in_debt_by_one_frame() -> None:
    # given a replay budget of 500/s burst 100 and a topic of 900 events: one subscribe
    # with since=0 passes on a full bucket and costs 900
    rows = limits_report(_flood(1.0), {"events": {}}, {"replay": (500.0, 100.0)}, 900)

    assert rows[0]["observed"] == 500  # 300 over the WebSocket, 200 in history pages
    assert rows[0]["bound"] == 100 + 500 + 1 + 800


def test_flooder_limited__needs_something_with_a_budget() -> None:
    assert flooder_limited(_flood(1.0, message=3)) is True
    assert flooder_limited(_flood(1.0, ping=9, http_snapshot=4)) is None
    nothing = {"seconds": 1.0, "kinds": {"message": {"sent": 9, "ok": 9}}}
    assert flooder_limited(nothing) is False


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.slow(seconds=25)
@pytest.mark.timeout(240)
@pytest.mark.django_db(transaction=True)
def test_hostile_member__the_flood_is_limited_and_the_wedding_loses_nothing(tmp_path) -> None:
    # given a real server started by the command, on this run's database (and Redis)
    report_path = tmp_path / "hostile.json"

    # when one vendor floods for 15 s while 40 members receive the planner's traffic, and
    # retention then runs once more as if it kept only 50 events of the topic
    call_command(
        "loadtest", "hostile-member", "--duration", "15", "--processes", "2",
        "--prune-at", "50", "--json", str(report_path),
        stdout=io.StringIO(), stderr=io.StringIO(),
    )  # fmt: skip
    report = json.loads(report_path.read_bytes())

    # then every member got every event of the topic (the flood's included) once, in order
    assert report["connections"]["succeeded"] == 40, report["connections"]
    deliveries = report["deliveries"]
    assert deliveries["expected"] > 0
    assert deliveries["missing"] == 0, deliveries
    assert deliveries["duplicates"] == 0
    assert deliveries["out_of_order"] == 0
    # and the planner's publishes all went through and were stored
    assert report["publishes"]["errors"] == {}, report["publishes"]
    assert report["checks"]["planner_publishes_stored"] is True

    # and the flooder was refused, over the WebSocket and over HTTP
    kinds = report["flood"]["kinds"]
    assert kinds["message"]["rate_limited"] > 0, kinds["message"]
    assert kinds["emergency"]["rate_limited"] > 0, kinds["emergency"]
    assert kinds["http_message"]["rate_limited"] > 0, kinds["http_message"]
    # and what it got stored (or through) is bounded by its budgets x the flood's length
    seconds = report["flood"]["seconds"]
    stored = report["flooder_stored"]["events"]
    assert stored.get("message.posted", 0) <= 40 + 20 * seconds + 1, (stored, seconds)
    assert stored.get("emergency.raised", 0) <= 5 + 1 * seconds + 1, (stored, seconds)
    outside = [row for row in report["limits"] if not row["within"]]
    assert not outside, outside

    # and the real history (the planner's and members' events, the open emergency, each
    # supplier's latest status) is all still stored, after the flood and after retention
    assert report["history"]["compare"]["intact"], report["history"]["compare"]
    assert report["prune"]["deleted_on_topic"] == 0, report["prune"]
    assert report["prune"]["history"]["intact"], report["prune"]["history"]
    # and retention pressed to 50 events still keeps every open emergency and latest status
    pressed = report["pressure_prune"]["history"]
    assert pressed["open_emergencies_missing"] == 0, pressed
    assert pressed["latest_statuses_missing"] == 0, pressed

    # and the overdue check, run as 6 to 21 minutes later, opened exactly one alert for the
    # wedding however many of its events wait (at most one; and the check did see them)
    overdue = report["overdue"]
    assert overdue["alerts_opened"] == 1, overdue
    assert report["passed"], report["checks"]
