"""Cache warming: which weddings are near, exactly which keys it fills, and the real task."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command

from core.cache import L2Cache, get_cache, reset_cache
from realtime.epoch import EPOCH_KEY
from scaling.warming import cache_warm, warm_plan
from tests import servers
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from weddings.models import Wedding

pytestmark = [pytest.mark.timeout(30)]

SATURDAY = dt.date(2026, 6, 13)  # British Summer Time (UTC+1), New York on EDT (UTC-4)


def utc(hour: int, minute: int = 0, day: dt.date = SATURDAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=dt.UTC)


def world_keys(world: dict[str, Any]) -> list[str]:
    """Every key the world's rows could be cached under, for cleaning Redis."""
    return (
        [f"snapshot:{w.pk}" for w in world["weddings"].values()]
        + [f"guests:{w.pk}" for w in world["weddings"].values()]
        + [f"supplier:{s.pk}" for s in world["suppliers"].values()]
        + [f"access:{u.pk}" for u in world["users"].values()]
        + [f"coordinator:{u.pk}" for u in world["users"].values()]
    )


def drop_from_redis(keys: list[str], namespace: str | None = None) -> None:
    """Delete just these keys of a namespace (the process cache's by default): Redis is shared."""
    cache = get_cache()
    if cache.l2 is not None:
        for key in keys:
            cache.l2.delete(f"{namespace or cache.namespace}:{key}")


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    reset_cache()
    yield
    reset_cache()


def build_world() -> dict[str, Any]:
    """Weddings at 14:00 local in London and New York, plus ones warming must skip."""
    users = {
        name: make_user()
        for name in (
            "london_vendor",
            "london_couple",
            "ny_vendor",
            "ny_couple",
            "idle_vendor",
            "cancelled_vendor",
        )
    }
    weddings = {
        "london": make_wedding(
            date=SATURDAY, time_zone="Europe/London", couple=(users["london_couple"],)
        ),
        "new_york": make_wedding(
            date=SATURDAY, time_zone="America/New_York", couple=(users["ny_couple"],)
        ),
        "cancelled": make_wedding(
            date=SATURDAY, time_zone="Europe/London", status=Wedding.Status.CANCELLED
        ),
        "next_week": make_wedding(date=SATURDAY + dt.timedelta(days=7), time_zone="Europe/London"),
    }
    suppliers = {
        "london": make_supplier(users=(users["london_vendor"],)),
        "new_york": make_supplier(users=(users["ny_vendor"],)),
        "inactive": make_supplier(users=(users["idle_vendor"],)),
        "cancelled": make_supplier(users=(users["cancelled_vendor"],)),
    }
    make_booking(supplier=suppliers["london"], wedding=weddings["london"])
    make_booking(supplier=suppliers["inactive"], wedding=weddings["london"], active=False)
    make_booking(supplier=suppliers["new_york"], wedding=weddings["new_york"])
    make_booking(supplier=suppliers["cancelled"], wedding=weddings["cancelled"])
    return {"users": users, "weddings": weddings, "suppliers": suppliers}


def expected_keys(world: dict[str, Any], place: str) -> set[str]:
    couple = "london_couple" if place == "london" else "ny_couple"
    vendor = "london_vendor" if place == "london" else "ny_vendor"
    return {
        f"snapshot:{world['weddings'][place].pk}",
        f"guests:{world['weddings'][place].pk}",
        f"access:{world['users'][vendor].pk}",
        f"access:{world['users'][couple].pk}",
        f"coordinator:{world['users'][vendor].pk}",
    }  # no supplier profile: nothing on the day reads one


# --- which weddings ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("now", "place"),
    [
        (utc(10, 0), "london"),  # London 14:00 BST = 13:00 UTC: 3 h ahead
        (utc(13, 59), "london"),  # started 59 min ago: still warmed
        (utc(15, 0), "new_york"),  # New York 14:00 EDT = 18:00 UTC: 3 h ahead
        (utc(18, 30), "new_york"),
    ],
)
def test_warm_plan__picks_ceremonies_in_the_window_by_their_own_time_zone(
    now: dt.datetime, place: str
) -> None:
    # given
    world = build_world()

    # when
    plan = warm_plan(now=now, horizon_hours=4)

    # then
    assert plan.weddings == [world["weddings"][place].pk]
    assert set(plan.keys()) == expected_keys(world, place)


@pytest.mark.django_db
def test_warm_plan__nothing_outside_the_window_and_never_cancelled_weddings() -> None:
    world = build_world()

    assert warm_plan(now=utc(8, 30), horizon_hours=4).weddings == []  # London 13:00 is 4.5 h off
    assert warm_plan(now=utc(14, 5), horizon_hours=3).weddings == []  # over an hour ago; NY > 3 h
    both = warm_plan(now=utc(14, 0), horizon_hours=4)
    assert both.weddings == sorted(
        [world["weddings"]["london"].pk, world["weddings"]["new_york"].pk]
    )


@pytest.mark.django_db
def test_warm_plan__a_ceremony_on_the_next_local_date_is_found() -> None:
    # given: Auckland (NZST, UTC+12) Sunday 11:00 is Saturday 23:00 UTC
    wedding = make_wedding(
        date=SATURDAY + dt.timedelta(days=1),
        time_zone="Pacific/Auckland",
        ceremony_time=dt.time(11, 0),
    )

    # when
    plan = warm_plan(now=utc(21, 0), horizon_hours=4)

    # then
    assert plan.weddings == [wedding.pk]


# --- what ends up in the cache ----------------------------------------------------------------


@pytest.mark.django_db
def test_cache_warm__fills_exactly_the_expected_keys_and_is_idempotent(settings: Any) -> None:
    # given
    world = build_world()
    settings.CACHE_WARM_HORIZON_HOURS = 4
    drop_from_redis(world_keys(world))
    cache = get_cache()
    cache.l1.clear()
    expected = expected_keys(world, "london")

    # when
    first = cache_warm(now=utc(11, 0))

    # then: the counts, the keys, and nothing else in L1
    assert first == {
        "weddings": 1,
        "snapshots": 1,
        "guest_lists": 1,
        "users": 2,
        "vendors": 1,
        "keys": first["keys"],
    }
    assert set(first["keys"]) == expected
    # and the stream epoch the snapshot read (realtime.epoch: through the cache as well)
    assert cache.l1.stats()["entries"] == len(expected | {EPOCH_KEY})
    for key in world_keys(world):
        assert (cache.get(key) is not None) == (key in expected), key
    snapshot = cache.get(f"snapshot:{world['weddings']['london'].pk}")
    assert snapshot["wedding"]["id"] == world["weddings"]["london"].pk

    if cache.l2 is not None:  # and in Redis, seen by a reader of its own
        reader = L2Cache(url=settings.REDIS_URL)
        in_redis = {
            k
            for k in world_keys(world)
            if reader.get(f"{cache.namespace}:{k}", count=False) is not _missing()
        }
        assert in_redis == expected

    # when: a second run
    loads = cache.loads
    second = cache_warm(now=utc(11, 0))

    # then: the same answer, nothing loaded again
    assert second == first
    assert cache.loads == loads
    assert cache.l1.stats()["entries"] == len(expected | {EPOCH_KEY})
    drop_from_redis(world_keys(world))


def _missing() -> object:
    from core import cache as cache_module

    return cache_module._MISSING


@pytest.mark.django_db
def test_warm_cache_command__prints_progress_and_a_summary() -> None:
    # given: a wedding about to start, in UTC so the test does not depend on the day
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    couple = make_user()
    wedding = make_wedding(
        date=soon.date(),
        ceremony_time=soon.time().replace(microsecond=0),
        time_zone="UTC",
        couple=(couple,),
    )
    keys = [f"snapshot:{wedding.pk}", f"guests:{wedding.pk}", f"access:{couple.pk}"]
    drop_from_redis(keys)
    out, err = StringIO(), StringIO()

    # when
    call_command("warm_cache", "--horizon-hours", "2", stdout=out, stderr=err)

    # then
    assert "warm_cache: 3/3 entries (100 %)" in err.getvalue()
    assert (
        "Warmed 1 wedding(s): 1 snapshot(s), 1 guest list(s), 1 access entry, "
        "0 coordinator entries (3 keys)."
    ) in out.getvalue()
    drop_from_redis(keys)


def test_beat_schedule__warms_every_15_minutes_and_expires_late_runs() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["scaling-warm-cache"]

    assert entry["task"] == "scaling.tasks.warm_cache"
    assert entry["schedule"] == 15 * 60
    assert 0 < entry["options"]["expires"] < entry["schedule"]


# --- the real task, run by a real worker ------------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.django_db(transaction=True)
def test_warm_cache_task__a_real_worker_fills_exactly_the_expected_keys(
    redis_url: str, tmp_path: Path
) -> None:
    # given: committed rows a worker process can see, one wedding soon and one too late
    now = dt.datetime.now(dt.UTC)
    vendor, couple, late_vendor = make_user(), make_user(), make_user()

    def wedding_at(moment: dt.datetime, **extra: Any) -> Wedding:
        return make_wedding(
            date=moment.date(),
            time_zone="UTC",
            ceremony_time=moment.time().replace(microsecond=0),
            **extra,
        )

    soon = wedding_at(now + dt.timedelta(hours=2), couple=(couple,))
    late = wedding_at(now + dt.timedelta(hours=settings.CACHE_WARM_HORIZON_HOURS + 2))
    supplier, late_supplier = make_supplier(users=(vendor,)), make_supplier(users=(late_vendor,))
    make_booking(supplier=supplier, wedding=soon)
    make_booking(supplier=late_supplier, wedding=late)
    expected = {
        f"snapshot:{soon.pk}",
        f"guests:{soon.pk}",
        f"access:{vendor.pk}",
        f"access:{couple.pk}",
        f"coordinator:{vendor.pk}",
    }
    unexpected = {
        f"snapshot:{late.pk}",
        f"supplier:{supplier.pk}",  # nothing on the day reads a supplier profile
        f"supplier:{late_supplier.pk}",
        f"access:{late_vendor.pk}",
    }
    # The worker builds its cache from plain settings: the default namespace, not the
    # per-test one conftest gives this process. Only this world's keys are touched there.
    namespace = "wedsync"
    reader = L2Cache(url=redis_url)
    drop_from_redis(sorted(expected | unexpected), namespace)
    # A queue of its own: another worker on this Redis (a developer's) cannot take the task.
    queue = f"test-warm-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DJANGO_DEBUG": "true",
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "DATABASE_URL": servers.test_database_url(),
        "REDIS_URL": redis_url,
    }
    log_path = tmp_path / "worker.log"
    log = log_path.open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "wedsync",
            "worker",
            "--pool",
            "solo",
            "-l",
            "info",
            "-Q",
            queue,
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=servers.BASE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # when (once the worker consumes its queue: a message sent to a queue nobody has
        # declared yet is routed nowhere by the Redis transport)
        from scaling.tasks import warm_cache

        ready_by = time.monotonic() + 60
        while b"ready." not in log_path.read_bytes() and worker.poll() is None:
            assert time.monotonic() < ready_by, log_path.read_text(errors="replace")
            time.sleep(0.2)
        warm_cache.apply_async(queue=queue)

        # then: the expected keys appear in Redis (bounded), and nothing else of this world
        deadline = time.monotonic() + 30
        found: set[str] = set()
        while time.monotonic() < deadline and worker.poll() is None:
            found = {
                k
                for k in expected | unexpected
                if reader.get(f"{namespace}:{k}", count=False) is not _missing()
            }
            if found >= expected:
                break
            time.sleep(0.2)
        exited = worker.poll()
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        drop_from_redis(sorted(expected | unexpected), namespace)
    output = log_path.read_text(errors="replace")
    assert exited is None, f"the worker exited early:\n{output}"
    assert found == expected, output
    assert "Task scaling.tasks.warm_cache[" in output and "succeeded" in output, output
