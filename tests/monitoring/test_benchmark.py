"""The Benchmark API: bounded scenarios, staff only, one run at a time, stored runs."""

from __future__ import annotations

import http.client

import orjson
import pytest
from django.test import Client

from monitoring.benchmark import SCENARIOS, validate
from monitoring.models import BenchmarkRun
from realtime.tokens import token_issue
from tests.factories import make_user
from tests.servers import Server
from weddings.models import Supplier, Wedding

URL = "/api/performance/realtime/benchmark"


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
    staff.force_login(make_user(is_staff=True))

    response = staff.post(URL, b'{"scenario": "saturday-peak"}', content_type="application/json")

    assert response.status_code == 403
    assert BenchmarkRun.objects.count() == 0


@pytest.mark.django_db
def test_api__one_running__second_post_409_and_nothing_started() -> None:
    BenchmarkRun.objects.create(scenario="saturday-peak", params={})
    staff = Client()
    staff.force_login(make_user(is_staff=True))

    response = staff.post(URL, b'{"scenario": "saturday-peak"}', content_type="application/json")

    assert response.status_code == 409
    assert orjson.loads(response.content)["error"]["code"] == "conflict"
    assert BenchmarkRun.objects.count() == 1


@pytest.mark.django_db
def test_api__bad_params__400_nothing_started() -> None:
    staff = Client()
    staff.force_login(make_user(is_staff=True))

    response = staff.post(
        URL, b'{"scenario": "saturday-peak", "params": {"duration": 600}}',
        content_type="application/json",
    )  # fmt: skip

    assert response.status_code == 400
    assert "params.duration" in orjson.loads(response.content)["error"]["message"]
    assert BenchmarkRun.objects.count() == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True)
def test_api__staff_runs_a_tiny_saturday_peak__report_stored_and_seeded_data_removed() -> None:
    # given a running server and a staff token
    staff = make_user(username="staff", is_staff=True)
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
