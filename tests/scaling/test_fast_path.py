"""The fast reactive path (issue #18 item 1): the emergency rule and its check
(``scaling.services.scaling_emergency_check``), and a synthetic breach measured end to
end: a real server process holding real WebSocket connections, its /metrics read as the
worker reads every pod's, the check run as beat runs it, the command actuator called."""

from __future__ import annotations

import asyncio
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import pytest
import yaml
from channels.db import database_sync_to_async
from django.conf import settings as django_settings

from realtime.models import Event
from scaling.decisions import ScalingPolicy
from scaling.emergency import FastReading
from scaling.models import ScalingDecision
from scaling.services import scaling_emergency_check, scaling_evaluate
from scaling.tasks import emergency_check
from tests.deploy.support import K8S_DIR
from tests.monitoring.test_peers import close_all, vendor_tokens
from tests.realtime.test_e2e import open_ws
from tests.servers import Server

UTC = dt.UTC
NOW = dt.datetime(2026, 6, 13, 13, 30, tzinfo=UTC)
STEP = dt.timedelta(seconds=5)  # SCALING_FAST_INTERVAL's default
POLICY = ScalingPolicy()  # 2 processes of 1,000 connections to start from: 2,000


def reading(at: dt.datetime, connections: int = 100, **figures) -> FastReading:
    return FastReading(at=at, connections=connections, **figures)


def check(at: dt.datetime, connections: int = 100, **figures) -> ScalingDecision | None:
    return scaling_emergency_check(
        now=at, reading=reading(at, connections, **figures), policy=POLICY
    )


@pytest.mark.django_db
@pytest.mark.timeout(30)
class TestEmergencyRule:
    def test_a_single_reading_over_the_limit_does_not_scale(self):
        # when: one reading at 95 % of capacity, then a normal one, then one more breach
        blip = check(NOW, connections=1900)
        calm = check(NOW + STEP, connections=1000)
        again = check(NOW + 2 * STEP, connections=1900)

        # then: no breach was seen twice in a row: nothing decided
        assert (blip, calm, again) == (None, None, None)
        assert not ScalingDecision.objects.exists()

    def test_two_consecutive_breaches_scale_out_at_once_and_broadcast(self):
        # when: two readings in a row over the limit, 5 s apart
        first = check(NOW, connections=1900)
        second = check(NOW + STEP, connections=1900)

        # then: the second decides a scale-out, applied and broadcast on ops
        assert first is None and second is not None
        assert second.made_at == NOW + STEP
        assert second.action == ScalingDecision.Action.SCALE_OUT
        assert (second.previous_asgi_processes, second.asgi_processes) == (2, 3)
        assert (second.previous_celery_workers, second.celery_workers) == (1, 2)
        assert second.actuator_status == ScalingDecision.Status.APPLIED
        assert second.reason.startswith("emergency rule (fast path)")
        assert "connections 1900 are 95% of capacity 2000" in second.reason
        assert second.inputs["emergency"]["rules"] == ["connections"]
        (event,) = Event.objects.filter(topic="ops", event="scaling.decided")
        assert event.payload["id"] == second.pk

    def test_readings_further_apart_than_two_intervals_are_not_consecutive(self):
        # when: two breaches 11 s apart (a check missing in between)
        check(NOW, connections=1900)
        later = check(NOW + 11 * STEP / 5, connections=1900)

        # then
        assert later is None

    def test_each_limit_is_an_emergency(self):
        cases = {
            "latency": {"latency_p95_s": 1.5, "latency_samples": 50},
            "cpu": {"cpu": 0.97},
            "outbox": {"outbox_depth": 5000},
        }
        for number, (rule, figures) in enumerate(cases.items()):
            ScalingDecision.objects.all().delete()
            start = NOW + number * dt.timedelta(hours=1)
            check(start, **figures)
            row = check(start + STEP, **figures)
            assert row is not None and row.inputs["emergency"]["rules"] == [rule], rule

    def test_a_p95_of_a_few_deliveries_is_not_an_emergency(self):
        figures = {"latency_p95_s": 5.0, "latency_samples": 3}
        check(NOW, **figures)
        assert check(NOW + STEP, **figures) is None

    def test_never_scales_in(self):
        # given: 10 processes running (a forecast scale-out), few connections
        big = ScalingPolicy(min_asgi=10, min_workers=4)
        scaling_evaluate(now=NOW - dt.timedelta(hours=1), policy=big)

        # when: CPU breaches twice while the connections need a single process
        scaling_emergency_check(now=NOW, reading=reading(NOW, cpu=0.97), policy=POLICY)
        row = scaling_emergency_check(
            now=NOW + STEP, reading=reading(NOW + STEP, cpu=0.97), policy=POLICY
        )

        # then: out by the reactive step from what runs, never down to the need
        assert row is not None
        assert (row.asgi_processes, row.celery_workers) == (15, 6)

    def test_at_the_maximum_nothing_is_decided(self):
        # given: the maximum runs
        at_max = ScalingPolicy(min_asgi=40, max_asgi=40, min_workers=20, max_workers=20)
        scaling_evaluate(now=NOW - dt.timedelta(hours=1), policy=at_max)
        rows = ScalingDecision.objects.count()

        # when
        for at in (NOW, NOW + STEP):
            scaling_emergency_check(now=at, reading=reading(at, cpu=0.99), policy=at_max)

        # then
        assert ScalingDecision.objects.count() == rows

    def test_within_the_cooldown_it_repeats_only_for_a_breach_that_grew(self):
        # given: an emergency scale-out to 3 processes (capacity 3,000)
        check(NOW, connections=1900)
        first = check(NOW + STEP, connections=1900)
        assert first is not None and first.asgi_processes == 3

        # when: still over the limit of the new capacity, no worse (the new pods start)
        same = [check(NOW + n * STEP, connections=2800) for n in (2, 3, 4)]
        # when: the breach grows by a quarter and more
        grown = check(NOW + 5 * STEP, connections=3600)
        # when: after the cooldown, a breach no larger than the last one
        after = NOW + 6 * STEP + POLICY.scale_out_cooldown
        check(after, connections=4800)
        late = check(after + STEP, connections=4800)

        # then
        assert same == [None, None, None]
        assert grown is not None and grown.asgi_processes == 5
        assert late is not None and late.previous_asgi_processes == 5

    def test_the_minute_evaluation_keeps_the_emergency_capacity(self):
        # given: an emergency scale-out, and a minute later a quiet reading
        check(NOW, connections=1900)
        row = check(NOW + STEP, connections=1900)

        # when: the minute evaluation runs on no measured load
        minute = scaling_evaluate(now=NOW + dt.timedelta(minutes=1), policy=POLICY)

        # then: it stores nothing: the scale-in cooldown holds the new capacity
        assert minute is None
        assert ScalingDecision.objects.order_by("-made_at").first() == row


def test_the_beat_entry_and_keda_poll_at_the_fast_interval():
    # then: beat runs the check every SCALING_FAST_INTERVAL, a late run dropped
    entry = django_settings.CELERY_BEAT_SCHEDULE["scaling-emergency-check"]
    assert entry["task"] == "scaling.tasks.emergency_check"
    assert entry["schedule"] == django_settings.SCALING_FAST_INTERVAL
    assert entry["options"]["expires"] <= django_settings.SCALING_FAST_INTERVAL
    # then: KEDA polls the decisions as often as the check can make one
    env = dict(
        line.split("=", 1)
        for line in (K8S_DIR / "base" / "config.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    interval = float(env["SCALING_FAST_INTERVAL"])
    keda = yaml.safe_load_all((K8S_DIR / "overlays" / "production" / "keda.yaml").read_text())
    polling = [o["spec"]["pollingInterval"] for o in keda if o["kind"] == "ScaledObject"]
    assert polling and all(p <= interval for p in polling)


# --- a synthetic breach, end to end ------------------------------------------------------

# Shortened for the CI budget: the server samples its gauges every 0.5 s (production: 5 s)
# and the check runs every second (production: 5 s). docs/scaling.md has the timeline at
# production's intervals; the promise asserted is the issue's: breach -> actuator < 30 s.
SAMPLE_INTERVAL = 0.5
FAST_INTERVAL = 1.0
PROMISE_S = 30.0
ACTUATE = """\
import sys, time
with open(sys.argv[1], "a") as calls:
    calls.write(f"{time.time()} {sys.argv[2]} {sys.argv[3]}\\n")
"""


@pytest.fixture
def server():
    running = Server("uvicorn", METRICS_SAMPLE_INTERVAL=str(SAMPLE_INTERVAL))
    yield running
    running.stop()


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_a_synthetic_breach__decided_and_actuated_within_the_promise(
    server, settings, tmp_path: Path
):
    # given: the worker reads the server's /metrics (as every pod's on Kubernetes), a
    # policy of 5 connections per process (2 processes: 10), the command actuator
    settings.METRICS_PEERS = [f"http://127.0.0.1:{server.port}"]
    settings.METRICS_TOKEN = ""
    settings.SCALING_CONNECTIONS_PER_PROCESS = 5
    settings.SCALING_FAST_INTERVAL = FAST_INTERVAL
    script, calls = tmp_path / "actuate.py", tmp_path / "calls.txt"
    script.write_text(ACTUATE)
    settings.SCALING_ACTUATOR = "command"
    settings.SCALING_COMMAND_TEMPLATE = (
        f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} "
        f"{shlex.quote(str(calls))} {{asgi}} {{workers}}"
    )
    tokens = await vendor_tokens(3)

    # when: 12 real connections open (120 % of the capacity: the breach)
    sockets = [await open_ws(server, token) for token in tokens for _ in range(4)]
    breach_at = time.time()
    try:
        # when: beat runs the check every FAST_INTERVAL until it decides
        row = None
        while row is None and time.time() - breach_at < PROMISE_S:
            started = time.monotonic()
            done = await database_sync_to_async(emergency_check)()
            if done is not None:
                row = await database_sync_to_async(ScalingDecision.objects.get)(pk=done["id"])
                break
            await asyncio.sleep(max(0.0, FAST_INTERVAL - (time.monotonic() - started)))
    finally:
        await close_all(sockets)

    # then: an emergency scale-out, stored and applied through the command
    assert row is not None, "no emergency decision within the promise"
    assert row.action == ScalingDecision.Action.SCALE_OUT
    assert row.reason.startswith("emergency rule (fast path)")
    assert row.inputs["emergency"]["reading"]["connections"] == 12
    assert row.actuator == "command" and row.actuator_status == ScalingDecision.Status.APPLIED
    (call,) = calls.read_text().splitlines()
    called_at, asgi, workers = call.split()
    assert (int(asgi), int(workers)) == (row.asgi_processes, row.celery_workers) == (4, 2)
    decided = row.made_at.timestamp() - breach_at
    actuated = float(called_at) - breach_at
    print(
        f"\nfast path: breach -> decision {decided:.2f} s -> actuator call {actuated:.2f} s "
        f"(sampling {SAMPLE_INTERVAL} s, check every {FAST_INTERVAL} s; promise {PROMISE_S} s)"
    )
    assert 0 < decided <= actuated < PROMISE_S
