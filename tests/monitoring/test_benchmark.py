"""The Benchmark API: bounded scenarios, staff only, starting a run needs
``monitoring.run_benchmark`` and is refused in wedding-day mode, one run at a time, stored
runs."""

from __future__ import annotations

import http.client

import orjson
import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from monitoring import benchmark
from monitoring.benchmark import SCENARIOS, validate
from monitoring.models import BenchmarkRun
from realtime.tokens import token_issue
from tests.factories import make_user
from tests.servers import Server
from weddings.models import Supplier, Wedding

URL = "/api/performance/realtime/benchmark"
BODY = b'{"scenario": "saturday-peak", "params": {"duration": 1}}'


def make_runner(**extra):
    """A staff user with the permission to start benchmark runs."""
    user = make_user(is_staff=True, **extra)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="monitoring", codename="run_benchmark")
    )
    return user


@pytest.fixture
def fake_loadtest(monkeypatch):
    """Replaces the child process: records each run's argv and answers a tiny report."""
    started: list[list[str]] = []

    async def run_loadtest(argv, report):
        started.append(argv)
        return {"deliveries": {"expected": 1, "missing": 0, "latency": {"p99": 1.0}}}

    monkeypatch.setattr(benchmark, "run_loadtest", run_loadtest)
    return started


def test_validate__defaults_filled_in() -> None:
    scenario, params = validate({"scenario": "saturday-peak", "params": {"duration": 5}})

    assert scenario == "saturday-peak"
    assert params["duration"] == 5
    assert params["connections"] == SCENARIOS["saturday-peak"]["connections"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scenario": "connections-max"}, "scenario"),
        ({"scenario": "saturday-peak", "params": {"duration": 61}}, "params.duration"),
        ({"scenario": "saturday-peak", "params": {"connections": 10_000}}, "params.connections"),
        ({"scenario": "saturday-peak", "params": {"duration": True}}, "params.duration"),
        ({"scenario": "saturday-peak", "params": {"clients": 5}}, "params.clients"),
        ({"scenario": "saturday-peak", "params": []}, "params"),
        ({"scenario": "saturday-peak", "extra": 1}, "body"),
    ],
)
def test_validate__out_of_bounds_or_unknown__names_the_field(body, field) -> None:
    with pytest.raises(ValueError, match=rf"^{field}"):
        validate(body)


@pytest.mark.django_db
def test_api__anonymous_401_vendor_403_staff_lists_scenarios() -> None:
    anonymous = Client().get(URL)
    vendor = Client()
    vendor.force_login(make_user())
    staff = Client()
    staff.force_login(make_user(is_staff=True))

    listed = staff.get(URL)

    assert anonymous.status_code == 401
    assert vendor.get(URL).status_code == 403
    assert listed.status_code == 200
    body = orjson.loads(listed.content)
    assert set(body["scenarios"]) == set(SCENARIOS)
    assert body["scenarios"]["saturday-peak"]["duration"]["max"] == 60


@pytest.mark.django_db
def test_api__session_post_without_csrf__refused() -> None:
    staff = Client(enforce_csrf_checks=True)
    staff.force_login(make_runner())

    response = staff.post(URL, b'{"scenario": "saturday-peak"}', content_type="application/json")

    assert response.status_code == 403
    assert BenchmarkRun.objects.count() == 0


@pytest.mark.django_db
def test_api__one_running__second_post_409_and_nothing_started() -> None:
    BenchmarkRun.objects.create(scenario="saturday-peak", params={})
    staff = Client()
    staff.force_login(make_runner())

    response = staff.post(URL, b'{"scenario": "saturday-peak"}', content_type="application/json")

    assert response.status_code == 409
    assert orjson.loads(response.content)["error"]["code"] == "conflict"
    assert BenchmarkRun.objects.count() == 1


@pytest.mark.django_db
def test_api__bad_params__400_nothing_started() -> None:
    staff = Client()
    staff.force_login(make_runner())

    response = staff.post(
        URL, b'{"scenario": "saturday-peak", "params": {"duration": 600}}',
        content_type="application/json",
    )  # fmt: skip

    assert response.status_code == 400
    assert "params.duration" in orjson.loads(response.content)["error"]["message"]
    assert BenchmarkRun.objects.count() == 0


@pytest.mark.django_db
def test_api__staff_without_the_permission__403_and_nothing_started(fake_loadtest) -> None:
    # given a staff user who may look but was not given monitoring.run_benchmark
    staff = Client()
    staff.force_login(make_user(is_staff=True))

    listed = staff.get(URL)
    response = staff.post(URL, BODY, content_type="application/json")

    # then they still see the scenarios, but starting a run is forbidden
    assert listed.status_code == 200
    assert response.status_code == 403
    error = orjson.loads(response.content)["error"]
    assert error["code"] == "forbidden" and "monitoring.run_benchmark" in error["message"]
    assert BenchmarkRun.objects.count() == 0 and fake_loadtest == []


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["staff with the permission", "superuser"])
def test_api__permitted_user__starts_a_run(fake_loadtest, who) -> None:
    user = make_runner() if who != "superuser" else make_user(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)

    response = client.post(URL, BODY, content_type="application/json")

    assert response.status_code == 200, response.content
    assert len(fake_loadtest) == 1
    run = BenchmarkRun.objects.get()
    assert (run.status, run.started_by_id) == ("done", user.pk)
    assert orjson.loads(response.content)["run"]["id"] == run.pk


@pytest.mark.django_db
def test_api__wedding_day_mode_on__refused_clearly_and_nothing_started(fake_loadtest) -> None:
    from scaling.services import wedding_day_mode_set

    # given wedding-day mode on and a user who may otherwise start runs
    wedding_day_mode_set(enabled=True, reason="Saturday: 40 weddings", user=None)
    client = Client()
    client.force_login(make_user(is_staff=True, is_superuser=True))

    response = client.post(URL, BODY, content_type="application/json")

    # then the run is refused with an error saying why and what to do, and nothing ran
    assert response.status_code == 423
    error = orjson.loads(response.content)["error"]
    assert error["code"] == "wedding_day_mode"
    assert "wedding-day mode is on" in error["message"] and "switched off" in error["message"]
    assert BenchmarkRun.objects.count() == 0 and fake_loadtest == []


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True)
def test_api__staff_runs_a_tiny_saturday_peak__report_stored_and_seeded_data_removed() -> None:
    # given a running server and a staff token
    staff = make_runner(username="staff")
    password_hash = staff.password
    token = token_issue(user=staff)
    weddings_before, suppliers_before = Wedding.objects.count(), Supplier.objects.count()
    server = Server("uvicorn")
    try:
        # when staff runs a tiny scenario against it
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=170)
        params = {"connections": 4, "per-wedding": 2, "rate": 2, "duration": 2}
        body = {"scenario": "saturday-peak", "params": params}
        conn.request(
            "POST", URL, body=orjson.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        response = conn.getresponse()
        answer = orjson.loads(response.read())
        conn.close()
    finally:
        server.stop()

    # then the report says every delivery arrived, the run is stored, and what the run
    # seeded is gone again (the staff account untouched)
    assert response.status == 200, answer
    deliveries = answer["report"]["deliveries"]
    assert deliveries["expected"] > 0
    assert (deliveries["missing"], deliveries["duplicates"], deliveries["out_of_order"]) == (
        0, 0, 0,
    )  # fmt: skip
    run = BenchmarkRun.objects.get()
    assert (run.status, run.started_by_id, run.params["connections"]) == ("done", staff.pk, 4)
    assert run.report["deliveries"]["expected"] == deliveries["expected"]
    assert (Wedding.objects.count(), Supplier.objects.count()) == (
        weddings_before, suppliers_before,
    )  # fmt: skip
    staff.refresh_from_db()
    assert staff.password == password_hash
