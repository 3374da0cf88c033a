"""The Benchmark API: ``GET``/``POST /api/performance/realtime/benchmark`` (staff).

``GET`` lists the scenarios with the bounds of their parameters and the recent runs.
``POST {"scenario": "saturday-peak", "params": {"connections": 50, "duration": 20}}``
runs one bounded scenario against this deployment and answers with its report. Starting
a run needs the ``monitoring.run_benchmark`` permission (403 without; superusers have
it) and is refused while wedding-day mode is on (423 ``wedding_day_mode``): a benchmark
loads the live deployment that the day's weddings depend on. The run
is the load benchmark itself (``manage.py loadtest SCENARIO --url <this server>
--cleanup``) in a child process, so the generator's CPU is not this server's event
loop's; ``--cleanup`` leaves the staff account alone and deletes the weddings, suppliers
and users it seeded. One run at a time across every process (a unique constraint on
the running row: a second POST gets 409); every run is stored (``BenchmarkRun``, in
admin).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from core import switches
from core.http import json_error, json_response
from realtime.api import api_authenticate

from .models import BenchmarkRun

# Per scenario: option -> (default, lowest, highest). Bounded so that a run stays under
# a minute of load and a few hundred connections on a live deployment.
SCENARIOS: dict[str, dict[str, tuple[int, int, int]]] = {
    "saturday-peak": {
        "connections": (50, 2, 200),
        "per-wedding": (10, 2, 40),
        "rate": (10, 1, 50),
        "duration": (20, 1, 60),
    },
    "reconnect-storm": {
        "connections": (50, 2, 200),
        "per-wedding": (10, 2, 40),
        "rate": (10, 1, 50),
        "before": (5, 1, 20),
        "after": (10, 1, 40),
    },
    "snapshot-read": {
        "clients": (10, 1, 50),
        "rate": (50, 1, 200),
        "duration": (20, 1, 60),
        "weddings": (3, 1, 5),
    },
}
# The child process: seeding, the run, cleanup. Past this it is killed.
RUN_TIMEOUT_S = 240
# A "running" row older than this belongs to a process that died mid-run.
STALE_AFTER = dt.timedelta(minutes=10)
# Who may start a run (staff with it; superusers have every permission).
RUN_PERMISSION = "monitoring.run_benchmark"


def validate(data: Any) -> tuple[str, dict[str, int]]:
    """``(scenario, params)`` with defaults filled in; ValueError naming the field."""
    if not isinstance(data, dict) or set(data) - {"scenario", "params"}:
        raise ValueError("body: an object with 'scenario' and optional 'params'")
    scenario = data.get("scenario")
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario: one of {', '.join(SCENARIOS)}")
    bounds = SCENARIOS[scenario]
    given = data.get("params", {})
    if not isinstance(given, dict):
        raise ValueError("params: an object")
    params = {name: default for name, (default, _, _) in bounds.items()}
    for name, value in given.items():
        if name not in bounds:
            raise ValueError(f"params.{name}: not a parameter of {scenario}")
        _, low, high = bounds[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"params.{name}: an integer from {low} to {high}")
        params[name] = value
    return scenario, params


def loadtest_argv(scenario: str, params: dict[str, int], ws_url: str, report: Path) -> list[str]:
    argv = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "loadtest", scenario]
    for name, value in params.items():
        argv += [f"--{name}", str(value)]
    return [*argv, "--url", ws_url, "--cleanup", "--json", str(report)]


async def run_loadtest(argv: list[str], report: Path) -> dict[str, Any]:
    """Run the load benchmark in a child process; its JSON report, or RuntimeError."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"the run took longer than {RUN_TIMEOUT_S} s and was stopped") from None
    data = await asyncio.to_thread(_read, report) if proc.returncode == 0 else None
    if data is None:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError("the run failed: " + (" | ".join(tail) or f"exit {proc.returncode}"))
    return orjson.loads(data)


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def summary(run: BenchmarkRun) -> dict[str, Any]:
    """A run as the API lists it."""
    report = run.report or {}
    return {
        "id": run.pk,
        "scenario": run.scenario,
        "params": run.params,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error or None,
        "latency_ms": (report.get("deliveries") or {}).get("latency"),
        "missing": (report.get("deliveries") or {}).get("missing"),
    }


def _start(scenario: str, params: dict[str, int], user: Any) -> BenchmarkRun | None:
    BenchmarkRun.objects.filter(
        status=BenchmarkRun.Status.RUNNING, started_at__lt=timezone.now() - STALE_AFTER
    ).update(status=BenchmarkRun.Status.FAILED, error="interrupted", finished_at=timezone.now())
    try:
        with transaction.atomic():
            return BenchmarkRun.objects.create(scenario=scenario, params=params, started_by=user)
    except IntegrityError:
        return None


def _may_start(user: Any) -> HttpResponse | None:
    """The refusal of a run this user may not start now, or None."""
    if not user.has_perm(RUN_PERMISSION):
        return json_error(
            "forbidden", f"starting a benchmark run needs the {RUN_PERMISSION} permission", 403
        )
    if switches.state("wedding_day_mode")["enabled"]:
        return json_error(
            "wedding_day_mode",
            "wedding-day mode is on: a benchmark would load the deployment the day's weddings "
            "rely on, so none is started; run it once wedding-day mode is switched off",
            423,
        )
    return None


def _finish(run: BenchmarkRun, report: dict | None, error: str = "") -> None:
    run.report, run.error, run.finished_at = report, error, timezone.now()
    run.status = BenchmarkRun.Status.FAILED if error else BenchmarkRun.Status.DONE
    run.save(update_fields=["report", "error", "finished_at", "status"])


def _recent() -> list[dict[str, Any]]:
    return [summary(run) for run in BenchmarkRun.objects.all()[:10]]


@csrf_exempt  # checked by api_authenticate for session callers; token callers need none
async def benchmark_view(request: HttpRequest) -> HttpResponse:
    """GET: the scenarios and recent runs. POST: run one (bounded) and return its report."""
    if request.method not in ("GET", "POST"):
        return json_error("method_not_allowed", "use GET or POST", 405)
    # The API's one authentication (bearer token, or session with CSRF for POST); it reads
    # the session and the user, so it runs in a thread.
    refused = await sync_to_async(api_authenticate)(request)
    if refused is not None:
        return refused
    user = request.user
    if not user.is_staff:
        return json_error("forbidden", "staff only", 403)
    if request.method == "GET":
        bounds = {
            name: {p: {"default": d, "min": lo, "max": hi} for p, (d, lo, hi) in opts.items()}
            for name, opts in SCENARIOS.items()
        }
        return json_response({"scenarios": bounds, "runs": await sync_to_async(_recent)()})
    refused = await sync_to_async(_may_start)(user)
    if refused is not None:
        return refused
    try:
        scenario, params = validate(orjson.loads(request.body or b"{}"))
    except orjson.JSONDecodeError:
        return json_error("bad_request", "the body is not valid JSON", 400)
    except ValueError as exc:
        return json_error("invalid_payload", str(exc), 400)
    run = await sync_to_async(_start)(scenario, params, user)
    if run is None:
        return json_error("conflict", "a benchmark is already running; try again later", 409)
    scheme = "wss" if request.is_secure() else "ws"
    ws_url = f"{scheme}://{request.get_host()}/ws/realtime/"
    with tempfile.TemporaryDirectory(prefix="wedsync-bench-") as folder:
        report_path = Path(folder) / "report.json"
        try:
            argv = loadtest_argv(scenario, params, ws_url, report_path)
            report = await run_loadtest(argv, report_path)
        except (RuntimeError, OSError) as exc:
            await sync_to_async(_finish)(run, None, str(exc)[:2000])
            return json_error("benchmark_failed", str(exc)[:500], 502, run=run.pk)
    await sync_to_async(_finish)(run, report)
    return json_response({"run": summary(run), "report": report})
