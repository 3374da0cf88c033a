"""What the image runs, without a Docker engine: the build stage's steps on exactly the
files the build context would send (.dockerignore applied), then the image's default
command and its HEALTHCHECK script against them.

This runs in the test virtualenv (production's packages plus the test tools), not in a
built image: the Dockerfile's own lines are linted and read by test_dockerfile.py.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.support import BASE_DIR, build_context_files
from tests.test_settings import clean_env

HEALTHCHECK = BASE_DIR / "deploy" / "docker" / "healthcheck.py"
PUBLIC_HOST = "wedsync.example.com"


def _healthcheck_module():
    spec = importlib.util.spec_from_file_location("wedsync_image_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("allowed_hosts", "host"),
    [
        ("wedsync.example.com", "wedsync.example.com"),
        (" wedsync.example.com , 10.0.0.7", "wedsync.example.com"),
        (".example.com,other.example.org", "example.com"),
        ("*", "localhost"),
        ("", "localhost"),
        ("*,wedsync.example.com", "wedsync.example.com"),
    ],
)
def test_healthcheck__sends_a_host_that_allowed_hosts_accepts(allowed_hosts, host):
    assert _healthcheck_module().probe_host(allowed_hosts) == host


def test_healthcheck__fails_when_nothing_listens():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused

        assert _healthcheck_module().healthy(port, "localhost") is False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _image_tree(root: Path) -> Path:
    """/app as the Dockerfile lays it out: the build context's files, nothing else."""
    app = root / "app"
    for path in build_context_files():
        target = app / path.relative_to(BASE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return app


def _image_env(app: Path, **overrides: str) -> dict[str, str]:
    """A production environment with nothing of this checkout's: no .env, no PYTHONPATH
    to the checkout (bench and the tests are not in the image)."""
    return clean_env(
        DJANGO_READ_DOT_ENV_FILE="false",
        PYTHONPATH="",
        PYTHONDONTWRITEBYTECODE="1",
        **overrides,
    )


def _get(port: int, path: str, host: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _wait_for(port: int, proc: subprocess.Popen, log: Path, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited early:\n{log.read_text()}")
        try:
            if _get(port, "/healthz", PUBLIC_HOST)[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the server did not answer /healthz within {timeout} s:\n{log.read_text()}")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_image__build_steps_and_default_command_work_on_the_build_context(tmp_path):
    # given: /app as the image has it, and the build stage's collectstatic (its command
    # and environment, as the Dockerfile's RUN line has them)
    app = _image_tree(tmp_path)
    assert not (app / "tests").exists() and not (app / "bench").exists()
    collect = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=app,
        env=_image_env(
            app,
            DJANGO_DEBUG="false",
            DJANGO_SECRET_KEY="collectstatic-at-build-only",
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "build-metrics"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collect.returncode == 0, collect.stdout + collect.stderr
    manifest = json.loads((app / "staticfiles" / "staticfiles.json").read_text())["paths"]

    # when: the image's default command, in production shape behind a proxy
    port = _free_port()
    log = tmp_path / "server.log"
    env = _image_env(
        app,
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="a-test-secret-key-" + "x" * 40,
        ALLOWED_HOSTS=PUBLIC_HOST,
        DJANGO_SECURE_SSL_REDIRECT="false",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CELERY_BROKER_DIR=str(tmp_path / "celery"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        REALTIME_SHUTDOWN_GRACE="1",
    )
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "wedsync.serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=app,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for(port, server, log)

            # then: the HEALTHCHECK passes with the site's Host, and fails for a Host the
            # site refuses (why the script sends one from ALLOWED_HOSTS)
            def healthcheck(allowed_hosts: str) -> int:
                return subprocess.run(
                    [sys.executable, str(app / "deploy/docker/healthcheck.py"), str(port)],
                    env={**env, "ALLOWED_HOSTS": allowed_hosts},
                    capture_output=True,
                    timeout=10,
                ).returncode

            assert healthcheck(PUBLIC_HOST) == 0
            assert healthcheck("not-this-site.example.org") == 1
            # and the collected, hashed static files are served from the image
            hashed = manifest["web/realtime.js"]
            assert _get(port, f"/static/{hashed}", PUBLIC_HOST)[0] == 200
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    # and SIGTERM drained it (uvicorn re-raises the signal once it is done)
    assert server.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "closing 0 connections with 1012" in log.read_text()
