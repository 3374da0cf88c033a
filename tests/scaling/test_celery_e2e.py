"""End to end: a real Celery worker and beat, on a Redis of the test's own, run the
scaling evaluation from the database scheduler; a decision row appears and wedding-day
mode switches on for a wedding in its window."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaling.models import ScalingDecision, WeddingDayModeChange
from tests import servers
from tests.factories import make_booking, make_supplier, make_user, make_wedding


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "wedsync", *argv],
        cwd=servers.BASE_DIR, env=env, stdin=subprocess.DEVNULL,
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_worker_and_beat__evaluate_scaling__decision_stored_and_wedding_day_mode_on(
    redis_url: str, tmp_path: Path
) -> None:
    # given a wedding whose ceremony is in an hour (inside its window), committed
    now = dt.datetime.now(dt.UTC)
    soon = now + dt.timedelta(hours=1)
    wedding = make_wedding(
        date=soon.date(), time_zone="UTC", ceremony_time=soon.time().replace(microsecond=0)
    )
    make_booking(supplier=make_supplier(users=(make_user(),)), wedding=wedding)
    # and a worker and beat (database scheduler) on a Redis of their own, evaluating every 2 s
    redis = servers.RedisServer()
    env = {
        **os.environ,
        "DJANGO_DEBUG": "true",
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "DATABASE_URL": servers.test_database_url(),
        "REDIS_URL": redis.url,
        "SCALING_EVALUATE_INTERVAL": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    (tmp_path / "metrics").mkdir()
    worker = _start(
        ["worker", "--pool", "solo", "-l", "info", "--without-heartbeat", "--without-gossip",
         "--without-mingle"],
        env, tmp_path / "worker.log",
    )  # fmt: skip
    beat = _start(
        ["beat", "-l", "info", "--max-interval", "1",
         "--pidfile", str(tmp_path / "beat.pid"), "-s", str(tmp_path / "beat-schedule")],
        env, tmp_path / "beat.log",
    )  # fmt: skip
    try:
        # when beat sends the evaluation and the worker runs it (bounded wait)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None and beat.poll() is None:
            if ScalingDecision.objects.exists() and WeddingDayModeChange.objects.exists():
                break
            time.sleep(0.5)
    finally:
        _stop(beat)
        _stop(worker)
        redis.stop()

    # then a decision was stored and wedding-day mode was switched on by the automation
    logs = (tmp_path / "worker.log").read_text() + (tmp_path / "beat.log").read_text()
    assert ScalingDecision.objects.exists(), logs[-3000:]
    change = WeddingDayModeChange.objects.order_by("-changed_at").first()
    assert change is not None, logs[-3000:]
    assert change.enabled is True
    assert change.changed_by is None  # the automation, not a person
