"""The soak's own world: a private Redis, the server (a supervisor and its workers), the
alert evaluator and, where namespaces can be made, the network the stall acts on.

Layout with namespaces (root, iproute2, and netem or /dev/net/tun)::

    root namespace: the soak (publishers), its receiver processes, the private Redis
                    (on 127.0.0.1 and the bridge address), a forwarder to the machine's
                    PostgreSQL (which listens on loopback), the evaluator
    host "web":     python -m wedsync.serve --workers N, on its own address

so every frame the server sends (deliveries, replies, its Redis and PostgreSQL traffic)
crosses the one link the stall holds. Without namespaces the server binds 127.0.0.1 and
the stall is left out (``World.stall_unavailable`` says why).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import redis
from django.conf import settings

from bench.loadtest.procstat import descendants
from bench.loadtest.seeding import database_url
from bench.loadtest.server import StartedServer, free_port, server_env
from bench.netns import Host, Network, missing_requirements

FORWARD = Path(__file__).resolve().parent.parent / "netns" / "forward.py"
REDIS_START_TIMEOUT_S = 15.0
EVALUATOR_STOP_S = 30.0  # to finish an evaluation under way once its stdin is closed


class PrivateRedis:
    """``redis-server`` without persistence on a fixed port, so it can be stopped and
    started again where the server expects it (a restart loses its data, as one without
    persistence does in production)."""

    def __init__(self, log_dir: Path, binds: list[str]) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (the soak runs a Redis of its own)")
        self.port = free_port()
        self.binds = binds
        self.log_path = log_dir / f"soak-redis-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        argv = [
            "redis-server", "--port", str(self.port), "--bind", *self.binds,
            "--save", "", "--appendonly", "no", "--protected-mode", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited (code {self.proc.returncode})")
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    client.close()
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def url(self, host: str) -> str:
        return f"redis://{host}:{self.port}/0"


class Forwarder:
    """``bench/netns/forward.py`` in a process of its own (stopped by closing its stdin)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.proc = subprocess.Popen(
            [sys.executable, str(FORWARD), listen[0], str(listen[1]), target[0], str(target[1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the PostgreSQL forwarder did not start")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()


class Evaluator:
    """``bench.soak.evaluator`` in a process with the server's environment."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._log: IO[bytes] = open(log_path, "wb")  # closed in stop()
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.soak.evaluator"],
            cwd=settings.BASE_DIR, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, start_new_session=True,
        )  # fmt: skip

    def run(self, command: str) -> dict[str, Any]:
        """Send one command and wait for its answer (blocking: call it from a thread).
        One at a time: a thread whose caller gave up still reads its own answer first."""
        with self._lock:
            if self.proc.poll() is not None:
                return {"ok": False, "error": f"the evaluator exited ({self.proc.returncode})"}
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            return {"ok": False, "error": "the evaluator exited"}
        try:
            return json.loads(line)
        except ValueError:
            return {"ok": False, "error": f"the evaluator answered {line[:200]!r}"}

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(EVALUATOR_STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


def _with_address(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{auth + '@' if auth else ''}{host}:{port}"))


class World:
    """Everything the soak starts, built in order and torn down in reverse (``close``)."""

    def __init__(self, *, workers: int, want_stall: bool, clear_minutes: int, log_dir: Path,
                 say) -> None:  # fmt: skip
        self.workers = workers
        self.say = say
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.app_name = f"wedsync-soak-{os.getpid()}"
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="wedsync-soak-metrics-"))
        self.network: Network | None = None
        self.host: Host | None = None
        self.forwarder: Forwarder | None = None
        self.redis: PrivateRedis | None = None
        self.server: StartedServer | None = None
        self.evaluator: Evaluator | None = None
        self.stall_unavailable: str | None = None if want_stall else "not asked for (--faults)"
        try:
            self._build(want_stall, clear_minutes)
        except BaseException:
            self.close()
            raise

    def _build(self, want_stall: bool, clear_minutes: int) -> None:
        server_address, reach = "127.0.0.1", "127.0.0.1"
        if want_stall:
            missing = missing_requirements()
            if missing:
                self.stall_unavailable = "; ".join(missing)
            else:
                self.network = Network()
                self.host = self.network.add_host("web", 21)
                server_address, reach = self.host.address, self.network.root_address
                link = "tap relay (no sch_netem)" if self.network.relay else "veth + tc netem"
                self.say(f"server host {server_address} in a namespace, link: {link}")
        self.redis = PrivateRedis(self.log_dir, sorted({"127.0.0.1", reach}))
        db_url = database_url()
        if reach != "127.0.0.1":
            db = urlsplit(db_url)
            self.forwarder = Forwarder((reach, free_port()), (db.hostname, db.port or 5432))
            db_url = _with_address(db_url, *self.forwarder.listen)
        common = {
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            "ALERT_CLEAR_MINUTES": str(clear_minutes),
        }
        self.server_overrides = {
            **common,
            "REDIS_URL": self.redis.url(reach),
            "DATABASE_URL": db_url,
            "DATABASE_APPLICATION_NAME": self.app_name,
            "ALLOWED_HOSTS": f"{server_address},127.0.0.1,localhost",
        }
        self.say(f"private Redis on port {self.redis.port}; starting {self.workers} workers")
        self.server = StartedServer(
            "uvicorn", self.server_overrides, self.log_dir, self.workers,
            host=server_address, wrap=self.host.command if self.host else None,
            log_name="soak-server",
        )  # fmt: skip
        evaluator_env = server_env({
            **common,
            "REDIS_URL": self.redis.url("127.0.0.1"),
            "DATABASE_APPLICATION_NAME": f"{self.app_name}-evaluator",
            "LOG_LEVEL": "ERROR",
        })  # fmt: skip
        self.evaluator = Evaluator(
            evaluator_env, self.log_dir / f"soak-evaluator-{os.getpid()}.log"
        )

    @property
    def supervisor_pid(self) -> int:
        assert self.server is not None
        return self.server.proc.pid

    def worker_pids(self) -> list[int]:
        """The server's workers now (the supervisor's children)."""
        if self.server is None or self.server.proc.poll() is not None:
            return []
        return sorted(p for p in descendants(self.supervisor_pid) if p != self.supervisor_pid)

    def close(self) -> None:
        """Stop everything started, in reverse order; safe after a partial build."""
        for part in (self.evaluator, self.server, self.redis, self.forwarder):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        if self.network is not None:
            self.network.close()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
