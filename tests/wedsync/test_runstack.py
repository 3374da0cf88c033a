"""``manage.py runstack`` end to end: real daphne, Celery worker and beat processes."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port
from tests.test_settings import BASE_DIR, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

STARTUP_S = 30  # until /healthz answers
STOP_S = 15  # from SIGINT to the exit of runstack (the grace period is 10 s)


def process_exists(pid: int) -> bool:
    """True while a process (zombies included) has this pid."""
    return Path(f"/proc/{pid}").exists()


def processes_in_group(pgid: int) -> list[int]:
    """The pids of every live (not zombie) process in a process group, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ")"
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            found.append(int(entry.name))
    return found


class Stack:
    """A running ``manage.py runstack`` and everything it printed."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env = env
        self.port = port
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runstack", "--port", str(port)],
            cwd=BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own session: a signal meant for the stack never reaches pytest.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first printed line matching ``pattern``; fails after ``timeout`` seconds."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    break
                self._changed.wait(min(left, 0.5))
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.output}")

    def children(self) -> dict[str, int]:
        """The pids of the children, as runstack printed them when it started them."""
        return {
            m.group(1): int(m.group(2))
            for m in re.finditer(r"runstack: started (\w+) \(pid (\d+)\)", self.output)
        }

    def get(self, path: str) -> tuple[int, Any]:
        """Status and JSON body of GET ``path`` (straight to the server, no proxy)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"runstack exited early:\n{self.output}"
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except (OSError, ValueError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        raise AssertionError(f"/healthz did not answer within {STARTUP_S} s:\n{self.output}")

    def stop(self) -> None:
        """Whatever state the test left it in: no runstack and no child of it remains."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.children().values():
            for member in processes_in_group(pid):
                os.kill(member, signal.SIGKILL)
        self._reader.join(timeout=5)


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start runstack on a migrated SQLite file in tmp_path; stopped after the test."""
    stacks: list[Stack] = []

    def start(**env_overrides: str) -> Stack:
        env = clean_env(
            DJANGO_DEBUG="true",
            DATABASE_URL=f"sqlite:///{tmp_path / 'stack.sqlite3'}",
            CELERY_BROKER_DIR=str(tmp_path / "celery"),
            **env_overrides,
        )
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        stack = Stack(env, free_port())
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.stop()


def send_task_and_wait_until_consumed(stack: Stack) -> None:
    """A built-in Celery task through the stack's broker; its worker must run it."""
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "wedsync", "call", "celery.accumulate",
         "--args", "[1, 2]"],
        cwd=BASE_DIR,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    task_id = result.stdout.strip().splitlines()[-1]
    stack.wait_for_line(
        rf"^\[worker\].*Task celery\.accumulate\[{re.escape(task_id)}\] succeeded", timeout=20
    )


def assert_stops_cleanly_on_sigint(stack: Stack) -> None:
    # given
    children = stack.children()
    assert set(children) == {"web", "worker", "beat"}, stack.output
    assert all(process_exists(pid) for pid in children.values())

    # when
    stack.proc.send_signal(signal.SIGINT)

    # then
    try:
        returncode = stack.proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"runstack did not exit within {STOP_S} s of SIGINT:\n{stack.output}")
    assert returncode == 0, stack.output
    left = {name: pid for name, pid in children.items() if processes_in_group(pid)}
    assert not left, f"children left running: {left}"
    assert "runstack: every process stopped." in stack.output


def test_runstack__embedded_default_serves_runs_tasks_and_stops_on_sigint(
    start_stack: Callable[..., Stack],
) -> None:
    # given
    stack = start_stack()

    # when
    stack.wait_until_healthy()

    # then: the banner, the readiness of the embedded parts, a worker that consumes
    stack.wait_for_line(r"WedSync Realtime is up on ", timeout=10)
    assert "mode: embedded default" in stack.output
    assert "ONE server process only" in stack.output
    assert f"ws://127.0.0.1:{stack.port}/ws/realtime/" in stack.output
    status, body = stack.get("/readyz")
    assert status == 200, body
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["channel_layer"]["ok"] is True
    assert "redis" not in body["checks"]
    stack.wait_for_line(r"^\[beat\].*beat: Starting", timeout=20)
    send_task_and_wait_until_consumed(stack)
    assert_stops_cleanly_on_sigint(stack)


def test_runstack__a_child_that_dies_stops_the_others_and_fails_naming_it(
    start_stack: Callable[..., Stack],
) -> None:
    # given
    stack = start_stack()
    stack.wait_until_healthy()
    children = stack.children()

    # when
    os.kill(children["worker"], signal.SIGKILL)

    # then
    try:
        returncode = stack.proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"runstack did not exit within {STOP_S} s:\n{stack.output}")
    assert returncode != 0
    assert "worker was killed by SIGKILL on its own" in stack.output
    left = {name: pid for name, pid in children.items() if processes_in_group(pid)}
    assert not left, f"children left running: {left}"


def test_runstack__children_stop_when_runstack_itself_is_killed(
    start_stack: Callable[..., Stack],
) -> None:
    # given
    stack = start_stack()
    stack.wait_until_healthy()
    children = stack.children()
    assert set(children) == {"web", "worker", "beat"}, stack.output

    # when: killed without a chance to stop its children
    stack.proc.kill()
    stack.proc.wait(STOP_S)

    # then: the kernel sends them SIGTERM (PR_SET_PDEATHSIG); none is left as an orphan
    deadline = time.monotonic() + STOP_S
    while time.monotonic() < deadline:
        left = {name: pid for name, pid in children.items() if processes_in_group(pid)}
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"children left running after runstack was killed: {left}"


@pytest.mark.redis
def test_runstack__redis_mode_reports_redis_ready_and_runs_tasks(
    start_stack: Callable[..., Stack], redis_url: str
) -> None:
    # given
    stack = start_stack(REDIS_URL=redis_url)

    # when
    stack.wait_until_healthy()

    # then
    assert "mode: Redis" in stack.output
    assert "ONE server process only" not in stack.output
    status, body = stack.get("/readyz")
    assert status == 200, body
    assert set(body["checks"]) == {
        "database", "redis", "channel_layer", "process", "read_only_mode",
    }  # fmt: skip
    assert body["status"] == "ready"
    assert all(check["ok"] for check in body["checks"].values()), body
    send_task_and_wait_until_consumed(stack)
    assert_stops_cleanly_on_sigint(stack)


def test_demo_lines__an_existing_staff_account_shows_no_password_and_the_rest_share_one(
    tmp_path: Path,
) -> None:
    # given seed_demo's JSON after a run that found the staff account already there
    from wedsync.management.commands.runstack import _demo_lines

    demo = {
        "staff": {"username": "staff", "password": None, "user_id": 1},
        "weddings": [
            {
                "id": 7, "topic": "wedding:7",
                "couple": {"username": "w7-couple", "password": "pw-of-the-run"},
                "suppliers": [
                    {"category": "planner",
                     "users": [{"username": "w7-planner", "password": "pw-of-the-run"}]},
                ],
            }
        ],
    }  # fmt: skip
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(demo))

    # when the logins are listed
    text = "\n".join(_demo_lines(path))

    # then the run's password is shown once, and staff keeps its own (never "None")
    assert "pw-of-the-run  (the same for every login)" in text
    assert "staff / (its own password)" in text
    assert "None" not in text
