"""The capacity model (bench/capacity.py): its calendar, its arithmetic on a tiny day, and
its command line."""

from __future__ import annotations

import datetime as dt

import pytest

from bench.capacity import (
    Assumptions,
    Limits,
    Measured,
    allocate,
    capacity_model,
    main,
    process_capacity,
    processes_per_topic,
    saturday_calendar,
    slot_starts,
)
from scaling.demand import SLOT, DemandParams, expected_connections

UTC = dt.UTC
# Two weddings in UTC, both with a 12:00 ceremony hour: one at 12:00, one at 12:30.
TINY = Assumptions(
    weddings=2,
    date=dt.date(2027, 9, 18),
    vendors=4,
    couple=2,
    devices_per_person=1.5,
    deliveries_per_connection=0.1,
    headroom=0.5,
    connections_per_process_policy=10,
    deliveries_per_worker=1.0,
    max_asgi=3,
    time_zones=(("UTC", 1.0),),
    ceremony_hours=((12, 1.0),),
)
COSTS = Measured(
    cpu_per_delivery_s=100e-6,
    cpu_per_connection_s=40e-6,
    storm_s_per_reconnect=2e-3,
    deliveries_per_process=18_000.0,
    rss_base_mib=24.0,
    rss_per_connection_kib=10.0,
    redis_cmds_per_event=20.0,
    redis_cpu_per_event_s=0.001,
    redis_cmds_per_connection_s=0.5,
    redis_cpu_per_connection_s=0.0001,
    redis_cpu_per_pubsub_message_s=0.0,
    redis_cpu_per_reconnect_s=0.001,
    pg_commits_per_event=2.0,
    pg_wal_bytes_per_event=1_000_000.0,
    pg_commits_per_connection_s=0.01,
    pg_wal_bytes_per_connection_s=0.0,
)


def test_allocate__splits_in_proportion_and_sums_to_the_total():
    assert allocate(10, [0.5, 0.3, 0.2]) == [5, 3, 2]
    assert allocate(2, [2 / 3, 1 / 3]) == [1, 1]  # the larger remainder gets the unit
    counts = allocate(10_000, [0.35, 0.20, 0.10, 0.20, 0.10, 0.05])
    assert sum(counts) == 10_000 and counts[0] == 3_500


def test_saturday_calendar__puts_weddings_at_their_local_ceremony_times_in_utc():
    # given the default spread (six zones, nine ceremony hours, on the hour or half past)
    calendar = saturday_calendar(Assumptions(weddings=1_000))
    # then every wedding is placed once, on the Saturday's local time, with 22 people
    assert sum(n for _, n in calendar) == 1_000
    assert {p.vendors for p, _ in calendar} == {22}
    # 18 September 2027 is summer time: London 12:00 is 11:00 UTC, New York 12:00 16:00
    starts = {p.ceremony_utc for p, _ in calendar}
    assert dt.datetime(2027, 9, 18, 11, tzinfo=UTC) in starts
    assert dt.datetime(2027, 9, 18, 16, tzinfo=UTC) in starts
    assert max(starts) == dt.datetime(2027, 9, 19, 1, 30, tzinfo=UTC)  # LA 18:30


def test_process_capacity__is_the_smallest_limit_and_names_it():
    capacity = process_capacity(TINY, COSTS, Limits(cpu=0.75, memory_mib=1024.0, storm_s=5.0))
    # CPU: 0.75 / (40 µs + 0.1 × 100 µs) = 15,000; memory: 1,000 MiB / 10 KiB = 102,400;
    # storm: 5 s / 2 ms = 2,500; deliveries: 18,000 / 0.1 = 180,000
    assert (capacity.by_cpu, capacity.by_memory, capacity.by_storm) == (15_000, 102_400, 2_500)
    assert capacity.by_deliveries == 180_000
    assert (capacity.connections, capacity.binding) == (2_500, "reconnect storm")


def test_processes_per_topic__counts_the_processes_a_wedding_spans():
    assert processes_per_topic(1, 33) == 1.0
    assert processes_per_topic(1_000, 1) == pytest.approx(1.0)
    assert processes_per_topic(2, 2) == pytest.approx(1.5)  # both on one process half the time
    assert processes_per_topic(0, 5) == 0.0


def test_capacity_model__adds_up_on_a_tiny_day():
    # given two weddings of 6 people × 1.5 devices = 9 devices each, at 12:00 and 12:30 UTC
    model = capacity_model(TINY, COSTS, Limits(storm_s=0.02))  # 10 connections a process
    noon = next(r for r in model.rows if r.hour_utc == dt.datetime(2027, 9, 18, 12, tzinfo=UTC))
    # then at noon both are fully on (the profile's plateau), plus the model's baseline
    assert noon.connections == pytest.approx(2 * 9 + 10)
    assert noon.active_weddings == 2
    assert noon.deliveries_per_s == pytest.approx(28 * 0.1)
    assert noon.events_per_s == pytest.approx(2 * 0.1)  # one topic each, 0.1 events/s
    assert noon.processes == 5  # ceil(28 × 1.5 / 10)
    assert noon.processes_policy == 5 and noon.workers_policy == 5  # ceil(2.8 × 1.5 / 1)
    assert noon.redis_cmds_per_s == pytest.approx(0.2 * 20 + 28 * 0.5)
    assert noon.redis_cpu == pytest.approx(0.2 * 0.001 + 28 * 0.0001)
    assert noon.pg_commits_per_s == pytest.approx(0.2 * 2 + 28 * 0.01)
    assert noon.pg_wal_mb_per_s == pytest.approx(0.2)
    # and the busiest hour is noon, whose fleet is over the policy's max_asgi (3)
    assert model.peak.hour_utc.hour == 12
    assert model.bottleneck.startswith("the scaling policy's max_asgi (3)")
    # and a reconnect of all 28 at once takes 28 ms of Redis
    assert model.storm_redis_s == pytest.approx(0.028)


def test_capacity_model__each_hour_is_its_busiest_slot_of_the_demand_model():
    # given the tiny day, every slot as the demand model itself computes it
    calendar = saturday_calendar(TINY)
    plans = [p for p, n in calendar for _ in range(n)]
    params = DemandParams(devices_per_vendor=1.5, deliveries_per_connection=0.1)
    by_hour: dict[dt.datetime, float] = {}
    for start in slot_starts(calendar):
        hour = start.replace(minute=0)
        value = expected_connections(plans, start + SLOT / 2, params)
        by_hour[hour] = max(by_hour.get(hour, 0.0), value)
    # then the model's rows are those maxima, hour by hour
    model = capacity_model(TINY, COSTS)
    assert {r.hour_utc: pytest.approx(r.connections) for r in model.rows} == by_hour
    # and the day runs from 6 h before the first ceremony to 10 h after the last
    assert model.rows[0].hour_utc == dt.datetime(2027, 9, 18, 6, tzinfo=UTC)
    assert model.rows[-1].hour_utc == dt.datetime(2027, 9, 18, 22, tzinfo=UTC)


def test_capacity_model__names_redis_when_its_core_runs_out_first():
    model = capacity_model(TINY, COSTS, Limits(redis_cpu=0.001))
    assert model.bottleneck.startswith("Redis:")


def test_main__prints_the_table_and_the_bottleneck(capsys):
    assert main(["--weddings", "50", "--devices", "2.1"]) == 0
    out = capsys.readouterr().out
    assert "50 weddings on Saturday 2027-09-18" in out and "2.1 devices a person" in out
    assert "\npeak: " in out and "\nbottleneck: " in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--date", "2027-09-19"], "is a Sunday, not a Saturday"),
        (["--date", "soon"], "must be a date"),
        (["--weddings", "0"], "must be 1 to 1,000,000"),
        (["--devices", "50"], "must be 0.1 to 10"),
        (["--weddings", "many"], "must be a whole number"),
        (["--devices", "nan"], "must be 0.1 to 10"),
        (["--vendors", "501"], "must be 1 to 500"),
    ],
)
def test_main__refuses_bad_input_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
