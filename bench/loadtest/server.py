"""The server under test: started by the benchmark (default) or given with ``--url``.

A started server is one ``wedsync.server.asgi_server`` command (uvicorn by default; with
``--server-workers N`` a supervisor and N uvicorn workers sharing the port) on a free
loopback port, on this process's database and Redis, with DEBUG off (as in production),
its own open-file limit raised for 10,000 connections, and its output in
``var/loadtest-server-<port>.log``. Its process tree is what ``procstat`` samples.
"""

from __future__ import annotations

import http.client
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from django.conf import settings

from wedsync.server.asgi_server import asgi_server_command

from .procstat import descendants
from .seeding import database_url

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def channel_layer_name(env: dict[str, str]) -> str:
    """The channel layer a server with this environment uses (settings.py's rule)."""
    if not env.get("REDIS_URL"):
        return "in-memory"
    return f"redis-{env.get('CHANNEL_LAYER') or 'pubsub'}"


def server_env(overrides: dict[str, str]) -> dict[str, str]:
    """The environment of a started server: this process's database and Redis,
    production-like settings, then ``--server-env`` overrides."""
    return {
        **os.environ,
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "DJANGO_DEBUG": "false",
        # The same key as this process: it signs the seeded users' tokens.
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "DJANGO_SECURE_SSL_REDIRECT": "false",  # plain HTTP on loopback
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CHANNEL_LAYER": settings.CHANNEL_LAYER,
        # This process's cache keys: what it seeded and cached is what the server reads
        # (a Redis shared with other databases holds rows under other namespaces).
        "CACHE_NAMESPACE": settings.CACHE_NAMESPACE,
        "LOG_LEVEL": "WARNING",
        **overrides,
    }


def _raise_nofile() -> None:
    """preexec_fn: the server's soft open-file limit up to its hard limit (the generator
    has raised that where it may: ``worker.raise_open_file_limit``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class StartedServer:
    """An ASGI server process of our own; ``stop()`` ends it and its process group."""

    def __init__(
        self,
        kind: str,
        overrides: dict[str, str],
        log_dir: Path,
        workers: int = 1,
        *,
        host: str = "127.0.0.1",
        wrap: Callable[[list[str]], list[str]] | None = None,
        log_name: str = "loadtest-server",
    ) -> None:
        """``host``: the address to bind (the soak's server binds its namespace's);
        ``wrap``: turns the server's argv into the one started (``ip netns exec ...``,
        which execs the server: the PID started is still the server's)."""
        self.kind = kind
        self.workers = workers
        self.host = host
        self.port = free_port()
        self.env = server_env(overrides)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{log_name}-{self.port}.log"
        self._log: IO[bytes] = open(self.log_path, "w+b")  # closed in stop()
        argv = asgi_server_command(host, self.port, kind, workers)
        self.proc = subprocess.Popen(
            wrap(argv) if wrap is not None else argv,
            cwd=settings.BASE_DIR,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_raise_nofile,  # the server's own fd limit
        )
        try:
            wait_healthy(host, self.port, STARTUP_TIMEOUT_S, self.proc)
        except Exception:
            self.stop()
            raise

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws/realtime/"

    @property
    def pids(self) -> list[int]:
        """The server's processes now: the process started and everything below it (a
        supervisor's workers)."""
        return descendants(self.proc.pid) if self.proc.poll() is None else []

    @property
    def channel_layer(self) -> str:
        return channel_layer_name(self.env)

    def output(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if not self._log.closed:
            self._log.close()


def wait_healthy(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None):
    """Return once GET /healthz answers 200; raise RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited early (code {proc.returncode})")
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no answer from http://{host}:{port}/healthz within {timeout:g} s")


def http_address(ws_url: str) -> tuple[str, int]:
    """(host, port) of the server behind a ws:// URL."""
    parts = urlsplit(ws_url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"--url must be a ws:// URL of /ws/realtime/, not {ws_url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80)
