"""Real ASGI server processes for end-to-end tests, on the test database and Redis.

They run in production shape: ``DJANGO_DEBUG=false``, a secret key, explicit allowed
hosts, the default sweep interval, and static files from a ``collectstatic`` run (hashed
manifest storage), made once per test session into a temporary STATIC_ROOT.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

from wedsync.server.asgi_server import asgi_server_command, die_with_parent_hook

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


test_database_url.__test__ = False  # a helper: pytest must not collect it where imported


def database_connections(allow: bool, application_name: str) -> None:
    """Let a server process reach the test database again, or cut it off: refuse every new
    connection to the database and end those of ``application_name`` (the server's
    ``DATABASE_APPLICATION_NAME``). The test's own connection stays open. PostgreSQL only."""
    import psycopg

    admin_dsn = test_database_url().rsplit("/", 1)[0] + "/postgres"
    name = connection.settings_dict["NAME"]
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {allow}')
        if not allow:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                [application_name],
            )


# The settings of the server processes: production's own module with STATIC_ROOT moved to
# a temporary folder (settings.py takes STATIC_ROOT from no environment variable).
_SERVER_SETTINGS = """\
from wedsync.settings import *  # noqa: F403

STATIC_ROOT = {static_root!r}
"""
_SERVER_SETTINGS_MODULE = "wedsync_test_server_settings"


def production_env() -> dict[str, str]:
    """The environment that puts a server process of this test run in production shape.

    DEBUG off, with the test process's own secret key (the tokens and the session hashes
    the tests make must verify in the server), and static files collected once per test
    session. Tests speak plain HTTP to the process on loopback, as the TLS-terminating
    proxy in front of production does, so the HTTPS redirect is left to that proxy; and
    they scrape /metrics from loopback, as a Prometheus on the same host that the
    deployment allows by network does (without DEBUG no network is allowed by default).
    """
    folder = _collected_static()
    return {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "METRICS_ALLOWED_NETWORKS": "127.0.0.1/32,::1/128",
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SETTINGS_MODULE": _SERVER_SETTINGS_MODULE,
        "PYTHONPATH": os.pathsep.join(
            [str(folder), str(BASE_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }


@functools.cache
def _collected_static() -> Path:
    """A folder holding the server settings module and its STATIC_ROOT, filled by
    ``manage.py collectstatic`` (once per test session; removed when the session ends)."""
    folder = Path(tempfile.mkdtemp(prefix="wedsync-static-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    static_root = folder / "static"
    (folder / f"{_SERVER_SETTINGS_MODULE}.py").write_text(
        _SERVER_SETTINGS.format(static_root=str(static_root))
    )
    env = {
        **os.environ,
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "DJANGO_SETTINGS_MODULE": _SERVER_SETTINGS_MODULE,
        "PYTHONPATH": os.pathsep.join([str(folder), str(BASE_DIR)]),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0 or not (static_root / "staticfiles.json").is_file():
        raise RuntimeError(f"collectstatic failed:\n{result.stdout}\n{result.stderr}")
    return folder


class Server:
    """An ASGI server process serving wedsync.asgi on a free port; stopped with ``stop()``.

    In production shape (``production_env``); ``env`` adds to it or overrides it.
    """

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
            **production_env(),
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            # The test's own cache keys: a test database's ids restart every run, and
            # rows cached by an earlier run must not answer for them.
            "CACHE_NAMESPACE": settings.CACHE_NAMESPACE,
            "LOG_LEVEL": "WARNING",
            **env,
        }
        # Set in this process by the browser tests (for their own ORM calls), never in
        # production.
        full_env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
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
    tests (the machine's Redis is shared by the rest of the suite). ``die_with_parent``:
    it ends with this process, even one SIGKILLed (a pytest-xdist worker's own Redis,
    tests/parallel.py)."""

    def __init__(self, port: int | None = None, *, die_with_parent: bool = False) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.die_with_parent = die_with_parent
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
            preexec_fn=die_with_parent_hook() if self.die_with_parent else None,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:  # the port was taken meanwhile, or it failed
                break
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
