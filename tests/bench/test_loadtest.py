"""The load benchmark's own logic (bench/loadtest/) and a tiny saturday-peak end to end.

The accounting tests feed seqs as a server might send them; the smoke test runs the
real command against a real server process and asserts delivery, never timing.
"""

from __future__ import annotations

import io
import json
import os
import socket

import pytest
from django.core.management import CommandError, call_command

from bench.loadtest.accounting import (
    DeliveryTotals,
    Latencies,
    Stream,
    publish_text,
    sent_at_ns,
)
from bench.loadtest.procstat import ProcSampler, listening_pids, read_cpu_rss
from bench.loadtest.report import render
from bench.loadtest.scenarios import (
    ConnectionsMax,
    FanoutMax,
    SaturdayPeak,
    ScenarioError,
    SnapshotRead,
    publishers_per_wedding,
    scenario_from_options,
)


def _stream(seqs: list[int], start: int = 0) -> Stream:
    stream = Stream("wedding:1", start)
    for seq in seqs:
        stream.on_event(seq)
    return stream


# --- per-stream accounting ----------------------------------------------------------------


def test_stream__in_order_delivery_is_complete_and_clean() -> None:
    stream = _stream([1, 2, 3, 4, 5])

    assert stream.received == 5
    assert stream.missing(5) == 0
    assert stream.complete(5)
    assert (stream.duplicates, stream.out_of_order, stream.gaps) == (0, 0, 0)


def test_stream__missing_seqs_are_loss() -> None:
    stream = _stream([1, 2, 5])

    assert stream.missing(6) == 3  # 3, 4 and 6
    assert not stream.complete(6)
    assert stream.gaps == 1


def test_stream__a_repeated_seq_is_a_duplicate_not_a_delivery() -> None:
    stream = _stream([1, 2, 2, 3, 1])

    assert stream.received == 3
    assert stream.duplicates == 2
    assert stream.missing(3) == 0


def test_stream__a_seq_held_back_arrives_out_of_order_and_fills_the_gap() -> None:
    # given 1, then 3 and 4 before 2
    stream = _stream([1, 3, 4, 2])

    # then nothing is lost, one arrival was out of order, and continuity is restored
    assert stream.out_of_order == 1
    assert stream.gaps == 1
    assert stream.missing(4) == 0
    assert stream.contig == 4 and not stream.ahead


def test_stream__a_duplicate_beyond_a_gap_is_still_a_duplicate() -> None:
    stream = _stream([1, 3, 3])

    assert stream.duplicates == 1
    assert stream.missing(3) == 1


def test_stream__seqs_up_to_the_subscribe_position_are_not_expected() -> None:
    # given a subscription at seq 10
    stream = _stream([10, 11, 12], start=10)

    # then 10 was already covered by the subscribe position
    assert stream.duplicates == 1
    assert stream.received == 2
    assert stream.missing(12) == 0


def test_stream__a_new_window_expects_only_what_follows_its_start() -> None:
    # given a first window with a loss that is never repaired
    stream = _stream([1, 2, 4])
    # when a second window starts after seq 4
    stream.start_window(4)
    stream.on_event(5)
    stream.on_event(6)

    # then it counts only its own deliveries: nothing of it is lost
    assert stream.received == 2
    assert stream.missing(6) == 0


def test_stream__a_late_final_seq_counts_everything_unseen() -> None:
    assert _stream([]).missing(0) == 0
    assert _stream([]).missing(7) == 7


# --- totals ------------------------------------------------------------------------------


def test_totals__sum_streams_and_merge_across_processes() -> None:
    # given two processes with one stream each, against final seq 4
    one, two = DeliveryTotals(), DeliveryTotals()
    one.add_stream(_stream([1, 2, 3, 4]), 4)
    two.add_stream(_stream([1, 1, 3, 2]), 4)
    one.latencies.add(5.0)
    two.latencies.add(7.0)

    # when merged
    one.merge(two)

    # then every count adds up
    assert (one.streams, one.expected, one.received) == (2, 8, 7)
    assert (one.missing, one.duplicates, one.out_of_order) == (1, 1, 1)
    assert one.incomplete_streams == 1
    assert one.loss == pytest.approx(1 / 8)
    assert not one.clean
    assert len(one.latencies) == 2


def test_totals__no_expected_deliveries_is_no_loss() -> None:
    totals = DeliveryTotals()

    assert totals.loss == 0.0
    assert totals.clean
    assert totals.as_dict()["latency"]["p99_ms"] is None


# --- latency -----------------------------------------------------------------------------


def test_latencies__nearest_rank_percentiles() -> None:
    lat = Latencies()
    for ms in range(100, 0, -1):  # 1..100, unsorted
        lat.add(float(ms))

    summary = lat.summary()

    assert (summary["p50_ms"], summary["p95_ms"], summary["p99_ms"]) == (50, 95, 99)
    assert summary["max_ms"] == 100
    assert summary["mean_ms"] == 50.5
    assert lat.percentile(0) == 1
    assert lat.percentile(100) == 100


def test_latencies__small_samples_and_empty() -> None:
    lat = Latencies()
    assert lat.percentile(99) is None
    lat.add(3.0)
    assert lat.percentile(50) == lat.percentile(99) == 3.0
    with pytest.raises(ValueError, match="between 0 and 100"):
        lat.percentile(101)


def test_publish_text__carries_the_send_time() -> None:
    text = publish_text(1_700_000_000_123_456_789, "w0p0-1")

    assert sent_at_ns(text) == 1_700_000_000_123_456_789
    assert sent_at_ns("a human message") is None
    assert sent_at_ns("loadtest soon") is None
    assert sent_at_ns(None) is None


# --- scenario parameters -----------------------------------------------------------------


def test_scenarios__defaults_are_the_issue_s_figures() -> None:
    peak = SaturdayPeak()

    assert (peak.connections, peak.weddings, peak.per_wedding) == (1000, 25, 40)
    assert (peak.rate, peak.duration) == (50.0, 60.0)
    assert ConnectionsMax().levels == (1000, 5000, 10_000)
    assert ConnectionsMax().weddings == 250
    assert SnapshotRead().clients == 50


def test_scenarios__out_of_range_names_the_option() -> None:
    with pytest.raises(ScenarioError, match=r"--connections must be between 1 and 60000, not 0"):
        SaturdayPeak(connections=0)
    with pytest.raises(ScenarioError, match=r"--duration must be between"):
        SaturdayPeak(duration=-5)
    with pytest.raises(ScenarioError, match=r"--connections must be a whole number"):
        SaturdayPeak(connections=10.5)
    with pytest.raises(ScenarioError, match=r"--rate must be a number"):
        SaturdayPeak(rate="fast")


def test_scenarios__checks_across_fields() -> None:
    with pytest.raises(ScenarioError, match=r"--max-rate \(10\) is below --start-rate \(50\)"):
        FanoutMax(max_rate=10)
    with pytest.raises(ScenarioError, match="publishes nothing"):
        SaturdayPeak(rate=0.1, duration=5)
    with pytest.raises(ScenarioError, match="--processes"):
        SnapshotRead(processes=2)
    with pytest.raises(ScenarioError, match="at most 60000"):
        FanoutMax(weddings=500, per_wedding=121)


def test_scenarios__connection_levels_parse_and_must_rise() -> None:
    assert ConnectionsMax(levels="100, 500,1000").levels == (100, 500, 1000)
    with pytest.raises(ScenarioError, match="must rise strictly"):
        ConnectionsMax(levels="500,100")
    with pytest.raises(ScenarioError, match="whole numbers separated by commas"):
        ConnectionsMax(levels="1k,5k")
    with pytest.raises(ScenarioError, match="at least one"):
        ConnectionsMax(levels="")


def test_scenarios__fanout_steps_from_start_to_max() -> None:
    assert FanoutMax(start_rate=50, step_rate=50, max_rate=200).rates() == [50, 100, 150, 200]
    assert FanoutMax(start_rate=50, step_rate=100, max_rate=200).rates() == [50, 150]


def test_scenarios__from_options_takes_given_values_only() -> None:
    scenario = scenario_from_options(
        "saturday-peak", {"connections": 50, "duration": None, "levels": None}
    )

    assert scenario.connections == 50
    assert scenario.duration == 60.0
    with pytest.raises(ScenarioError, match="unknown scenario 'tuesday'"):
        scenario_from_options("tuesday", {})


def test_publishers__spread_so_none_exceeds_half_the_server_limit() -> None:
    assert publishers_per_wedding(50, 25) == 1  # 2/s per wedding
    assert publishers_per_wedding(500, 25) == 2  # 20/s per wedding
    assert publishers_per_wedding(2000, 25) == 8  # 80/s per wedding


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source-addresses", "0"], "between 1 and 64"),
        (["--source-addresses", "65"], "between 1 and 64"),
        (["--source-addresses", "2", "--url", "ws://10.1.2.3:8000/ws/realtime/"], "loopback"),
        (["--source-addresses", "2", "--url", "http://x"], "must be a ws:// URL"),
    ],
)
def test_command__source_addresses_are_checked_before_anything_is_seeded(args, message) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("loadtest", "saturday-peak", *args, stderr=io.StringIO())


def test_command__refuses_options_of_another_scenario() -> None:
    with pytest.raises(CommandError, match="--levels does not apply to saturday-peak"):
        call_command("loadtest", "saturday-peak", "--levels", "10")
    with pytest.raises(CommandError, match="--connections must be between"):
        call_command("loadtest", "saturday-peak", "--connections", "0")


# --- /proc sampling and the report ---------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux /proc only")
def test_procstat__reads_this_process_and_finds_a_listener() -> None:
    cpu, rss = read_cpu_rss(os.getpid())
    assert cpu >= 0 and rss > 1_000_000
    sampler = ProcSampler([os.getpid()])
    first = sampler.sample()
    sum(range(200_000))
    last = sampler.sample()
    window = sampler.window(first.at, last.at)
    assert window["rss_max_mib"] > 1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert os.getpid() in listening_pids(sock.getsockname()[1])


def test_report__renders_a_run() -> None:
    totals = DeliveryTotals()
    totals.add_stream(_stream([1, 2]), 3)
    report = {
        "scenario": "saturday-peak",
        "parameters": {"processes": 1},
        "server": {"kind": "uvicorn", "channel_layer": "redis-pubsub", "database": "postgresql"},
        "connections": {"attempted": 2, "succeeded": 2, "failures": {}, "publishers": 1},
        "deliveries": {**totals.as_dict(), "per_s": 10.0},
        "elapsed_s": 1.5,
    }

    text = render(report)

    assert "lost" in text and "1 (33.333 %)" in text
    assert "uvicorn, channel layer redis-pubsub" in text


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True)
def test_saturday_peak_smoke__every_receiver_gets_every_event_once_in_order(tmp_path) -> None:
    # given a real server started by the command, on this run's database (and Redis)
    report_path = tmp_path / "peak.json"

    # when a tiny saturday-peak runs: 50 receivers on 2 weddings, 50 publishes/s for 5 s,
    # the receivers connecting from three loopback addresses in turn
    out = io.StringIO()
    call_command(
        "loadtest", "saturday-peak", "--connections", "50", "--duration", "5",
        "--processes", "2", "--source-addresses", "3", "--json", str(report_path),
        stdout=out, stderr=io.StringIO(),
    )  # fmt: skip

    # then every publish was accepted and every receiver got each event once, in order
    report = json.loads(report_path.read_bytes())
    assert report["connections"]["succeeded"] == 50, report["connections"]
    assert report["publishes"]["ok"] == 250
    assert report["publishes"]["errors"] == {}
    deliveries = report["deliveries"]
    assert deliveries["expected"] == 250 * 25  # a publish reaches its wedding's receivers
    assert deliveries["received"] == deliveries["expected"]
    assert deliveries["missing"] == 0
    assert deliveries["duplicates"] == 0
    assert deliveries["out_of_order"] == 0
    assert deliveries["latency"]["count"] == deliveries["received"]
    # and the connections came from the three addresses, as the report says
    hosts = report["receivers"]["source_hosts"]
    assert set(hosts) == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}, hosts
    assert sum(hosts.values()) == 50 + report["receivers"]["reconnects"]
    assert min(hosts.values()) >= 16
    row = next(line for line in out.getvalue().splitlines() if line.startswith("connected from"))
    assert "127.0.0.1" in row and "127.0.0.3" in row
