"""The JavaScript client as a package (clients/js): its own Node tests against a real
server, what ``npm pack`` ships, and its TypeScript declarations.

One server process (tests/servers.py, production shape) serves the module. The Node
tests (clients/js/test/*.test.mjs, Node's own test runner) get the server's URL, a
vendor's token and the wedding from the environment, and check real behaviour: connect
and subscribe, events in order, ``since`` replay, epochs, a connection cut by a TCP proxy,
and the Server-Sent Events fallback. Run with a wrong token they must fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from realtime.tokens import token_issue
from tests.conftest import IN_CI
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import Server

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "js"
SOURCE = PACKAGE / "realtime.js"
# What the tarball holds: the module, its declarations, the README (npm adds package.json).
SHIPPED = {"package.json", "realtime.js", "realtime.d.ts", "README.md"}
# The tests of clients/js/test/server.test.mjs.
SERVER_TESTS = 6


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"CI=true but `{name}` is not on PATH", pytrace=False)
        pytest.skip(f"`{name}` is not on PATH (install Node.js 20 or later)")
    return path


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Server]:
    running = Server("uvicorn", CACHE_NAMESPACE=f"test-js-{uuid.uuid4().hex[:12]}")
    yield running
    running.stop()


@pytest.fixture
def wedding_day(transactional_db: Any) -> dict[str, str]:
    """A wedding and a photographer booked on it, with a token."""
    vendor = make_user()
    wedding = make_wedding()
    make_booking(supplier=make_supplier(users=(vendor,)), wedding=wedding)
    return {"WEDSYNC_WEDDING": str(wedding.pk), "WEDSYNC_TOKEN": token_issue(user=vendor)}


def run_node_tests(server: Server, env: dict[str, str]) -> subprocess.CompletedProcess:
    node = _tool("node")
    return subprocess.run(
        [node, "--experimental-websocket", "--test", "--test-reporter=tap", "test/"],
        cwd=PACKAGE,
        env={**os.environ, "WEDSYNC_URL": f"http://127.0.0.1:{server.port}", **env},
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )


def tap_counts(output: str) -> dict[str, int]:
    """The summary of Node's TAP reporter: {"tests": 12, "pass": 12, "fail": 0, ...}."""
    return {k: int(v) for k, v in re.findall(r"^# (\w+) (\d+)$", output, re.MULTILINE)}


@pytest.mark.slow
def test_node_tests__pass_against_a_real_server(server: Server, wedding_day: dict) -> None:
    done = run_node_tests(server, wedding_day)

    counts = tap_counts(done.stdout)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert counts["fail"] == 0
    assert counts["skipped"] == 0
    assert counts["pass"] >= SERVER_TESTS + 6, counts  # the server tests did run


@pytest.mark.slow
def test_node_tests__fail_when_the_server_refuses_the_token(
    server: Server, wedding_day: dict
) -> None:
    done = run_node_tests(server, {**wedding_day, "WEDSYNC_TOKEN": "x" * 40})

    counts = tap_counts(done.stdout)
    assert done.returncode != 0
    # every server test fails (the refused-token one too: its own check that the other
    # clients were let in), and fast: no test waited for a timeout
    assert counts["fail"] == SERVER_TESTS, done.stdout[-6000:]
    assert "timed out" not in done.stdout


def test_npm_pack__ships_the_module_itself_and_its_declarations() -> None:
    npm = _tool("npm")
    done = subprocess.run(
        [npm, "pack", "--dry-run", "--json"],
        cwd=PACKAGE,
        env={**os.environ, "npm_config_update_notifier": "false"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    files = {f["path"]: f["size"] for f in json.loads(done.stdout)[0]["files"]}
    assert set(files) == SHIPPED
    # the module the web app serves (web.finders) is the one shipped
    assert files["realtime.js"] == SOURCE.stat().st_size
