"""Real ASGI server processes for end-to-end tests, on the test database and Redis."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

from wedsync.server.asgi_server import asgi_server_command

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """The URL of the database this test run uses (pytest-django's test database)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    auth = f"{user}:{db['PASSWORD']}@" if db.get("PASSWORD") else (f"{user}@" if user else "")
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{db['NAME']}"


class Server:
    """An ASGI server process serving wedsync.asgi on a free port; stopped with ``stop()``."""

    def __init__(
        self, server: str = "uvicorn", port: int | None = None, workers: int = 1, **env: str
    ) -> None:
        self.port = port or free_port()
        self.server = server
        self.workers = workers
        # Its own metric files unless the test shares a directory between servers (the
        # monitoring tests do); removed when the server stops.
        self.own_metrics_dir = None
        if "PROMETHEUS_MULTIPROC_DIR" not in env:
            self.own_metrics_dir = tempfile.mkdtemp(prefix="wedsync-metrics-")
            env["PROMETHEUS_MULTIPROC_DIR"] = self.own_metrics_dir
        self.metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
        full_env = {
            **os.environ,
            "DJANGO_DEBUG": "true",
            "DJANGO_READ_DOT_ENV_FILE": "false",
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "REALTIME_SWEEP_INTERVAL": "1",
            # The test's own cache keys: a test database's ids restart every run, and
            # rows cached by an earlier run must not answer for them.
            "CACHE_NAMESPACE": settings.CACHE_NAMESPACE,
            "LOG_LEVEL": "WARNING",
            **env,
        }
        self.log = open(BASE_DIR / "var" / f"e2e-server-{self.port}.log", "w+b")
        self.proc = subprocess.Popen(
            asgi_server_command("127.0.0.1", self.port, server, workers),
            cwd=BASE_DIR,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/realtime/"

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer /healthz in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def kill(self) -> None:
        """Crash the server: SIGKILL, no goodbye to its clients."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if not self.log.closed:
            self.log.close()
        if self.own_metrics_dir is not None:
            shutil.rmtree(self.own_metrics_dir, ignore_errors=True)


class RedisServer:
    """A redis-server of the test's own on a free port, to kill and restart in fault
    tests (the machine's Redis is shared by the rest of the suite)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """Crash Redis: SIGKILL; it keeps nothing on disk, so it comes back empty."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    stop = kill
