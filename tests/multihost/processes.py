"""The processes of the hosts (``bench.netns``): a private Redis and PostgreSQL
on the data host, and server processes on the web hosts.

Private, because a partition must cut a web host from *its* Redis, and the machine's
own Redis and PostgreSQL are shared with every other test run; and on a namespace's
address, because a fault between hosts must lie on the path between the processes. The
servers are ``tests.servers.Server``'s production shape (``production_env``), bound to
their host's address instead of loopback and started with ``ip netns exec``.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.netns import Host
from tests.servers import BASE_DIR, production_env
from wedsync.server.asgi_server import asgi_server_command

REDIS_PORT = 6379
POSTGRES_PORT = 5432
SERVER_PORT = 8000
DATABASE_NAME = "wedsync"
# PostgreSQL refuses to run as root; its clusters belong to this OS user.
POSTGRES_USER = "postgres"


def postgres_binaries() -> Path | None:
    """The folder of ``initdb`` and ``postgres`` (on PATH, or Debian's versioned folder)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def missing_programs() -> list[str]:
    """What this module needs and the machine lacks."""
    programs = ("redis-server", "setpriv")
    missing = [f"`{p}` is not installed" for p in programs if not shutil.which(p)]
    if postgres_binaries() is None:
        missing.append("PostgreSQL's initdb is not installed")
    try:
        pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        missing.append(f"no OS user {POSTGRES_USER!r} to run a private PostgreSQL as")
    return missing


def _wait(what: str, ready, proc: subprocess.Popen, output, timeout: float = 30) -> None:
    """Poll ``ready()`` until it holds; raise with ``output()`` when ``proc`` exits first
    or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{output()}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready in {timeout} s:\n{output()}")


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """Send ``sig`` to the process group of ``proc`` (started in a session of its own),
    then SIGKILL it after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        proc.wait(5)


class PrivateRedis:
    """A redis-server of the test's own on ``host``'s address; nothing kept on disk."""

    def __init__(self, host: Host, port: int = REDIS_PORT) -> None:
        self.host, self.port = host, port
        self.url = f"redis://{host.address}:{port}/0"
        self.log = tempfile.TemporaryFile()
        self.proc = host.popen(
            ["redis-server", "--bind", host.address, "--port", str(port), "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait("redis-server", self._pong, self.proc, self.output)

    def _pong(self) -> bool:
        with socket.create_connection((self.host.address, self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own on ``host``'s address: ``initdb`` into a
    temporary folder, run as the ``postgres`` OS user, trusting the hosts' subnet.

    Durability is off (``fsync``): the cluster lives for one test and is never crashed;
    the event log's guarantees under test come from transactions, not from the disk.
    """

    def __init__(self, host: Host, subnet: str, port: int = POSTGRES_PORT) -> None:
        self.host, self.port = host, port
        self.url = f"postgres://{POSTGRES_USER}@{host.address}:{port}/{DATABASE_NAME}"
        self.proc: subprocess.Popen | None = None
        bin_dir = postgres_binaries()
        assert bin_dir is not None, "PostgreSQL is not installed"
        self.folder = Path(tempfile.mkdtemp(prefix="wedsync-multihost-pg-"))
        self.log = tempfile.TemporaryFile()
        try:
            account = pwd.getpwnam(POSTGRES_USER)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            data = self.folder / "data"
            subprocess.run(
                [*self._as_postgres(), str(bin_dir / "initdb"), "-D", str(data), "-U",
                 POSTGRES_USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {subnet} trust\n")
            self.proc = host.popen(
                [*self._as_postgres(), str(bin_dir / "postgres"), "-D", str(data),
                 "-c", f"listen_addresses={host.address}", "-c", f"port={port}",
                 "-c", f"unix_socket_directories={self.folder}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            _wait("postgres", self._accepts, self.proc, self.output)
            self._sql(f'CREATE DATABASE "{DATABASE_NAME}"', database="postgres")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _as_postgres() -> list[str]:
        """The prefix that runs a program as the postgres OS user (setpriv execs it:
        no process in between to forward signals)."""
        return ["setpriv", f"--reuid={POSTGRES_USER}", f"--regid={POSTGRES_USER}",
                "--clear-groups"]  # fmt: skip

    def _accepts(self) -> bool:
        self._sql("SELECT 1", database="postgres")
        return True

    def _sql(self, sql: Any, params: tuple = (), database: str = DATABASE_NAME) -> list[tuple]:
        import psycopg

        dsn = f"host={self.host.address} port={self.port} user={POSTGRES_USER} dbname={database}"
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                cursor = conn.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        except psycopg.OperationalError as exc:
            raise OSError(str(exc)) from exc

    def query(self, sql: Any, params: tuple = ()) -> list[tuple]:
        """The rows of ``sql`` (a string or a ``psycopg.sql`` composition) on the private
        database, asked from the root namespace."""
        return self._sql(sql, params)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # fast shutdown: roll back, close, exit
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def server_env(redis: PrivateRedis, database: PrivatePostgres, hosts: list[Host]) -> dict:
    """The environment of a process of this deployment: ``tests.servers.production_env``
    on the private Redis and PostgreSQL, answering to the hosts' addresses."""
    env = {
        **os.environ,
        **production_env(),
        "DATABASE_URL": database.url,
        "REDIS_URL": redis.url,
        "CACHE_NAMESPACE": "multihost",  # the Redis is private: no other run shares it
        "ALLOWED_HOSTS": ",".join([h.address for h in hosts] + ["127.0.0.1", "localhost"]),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return env


def seed(env: dict, users: int) -> dict:
    """Migrate the private database and make one wedding with ``users`` vendors on it,
    in a process of its own (this process's ORM is on the test run's database): returns
    ``{"topic", "tokens"}`` (``tests.multihost.seed``)."""
    metrics = tempfile.mkdtemp(prefix="wedsync-metrics-")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tests.multihost.seed", str(users)],
            cwd=BASE_DIR, env={**env, "PROMETHEUS_MULTIPROC_DIR": metrics},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        shutil.rmtree(metrics, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(f"seeding failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class HostServer:
    """``python -m wedsync.serve`` on ``host``, bound to the host's address: started by
    ``start()`` (again after ``kill()``, as a supervisor would), crashed by ``kill()``."""

    def __init__(self, host: Host, env: dict, port: int = SERVER_PORT) -> None:
        self.host, self.env, self.port = host, env, port
        self.proc: subprocess.Popen | None = None
        self.log = None
        self.starts = 0
        self.metrics_dir = tempfile.mkdtemp(prefix="wedsync-metrics-")

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host.address}:{self.port}/ws/realtime/"

    def start(self) -> HostServer:
        """Start the process and wait until /healthz answers from the root namespace."""
        self.starts += 1
        if self.log is not None:
            self.log.close()
        self.log = open(BASE_DIR / "var" / f"multihost-{self.host.name}-{self.starts}.log", "w+b")
        self.proc = self.host.popen(
            asgi_server_command(self.host.address, self.port),
            cwd=BASE_DIR,
            env={**self.env, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(f"the server on {self.host.name}", lambda: self.status("/healthz") == 200,
                  self.proc, self.output)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        """The HTTP status and body of GET ``path`` (``(0, b"")`` when it fails)."""
        conn = http.client.HTTPConnection(self.host.address, self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def status(self, path: str, timeout: float = 5) -> int:
        """The HTTP status of GET ``path`` (0 when the request fails)."""
        return self.get(path, timeout)[0]

    def readiness(self, timeout: float = 15) -> str:
        """What /readyz says: ``ready``, ``degraded`` (a shared dependency such as Redis
        is out of reach: the process serves from the event log), ``not_ready``; or
        ``unanswered``."""
        status, body = self.get("/readyz", timeout)
        try:
            return json.loads(body)["status"] if status else "unanswered"
        except (ValueError, KeyError, TypeError):
            return f"HTTP {status}"

    def output(self) -> str:
        if self.log is None or self.log.closed:
            return ""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def kill(self) -> None:
        """Crash the server: SIGKILL, no goodbye to its clients."""
        _stop(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (the graceful drain), SIGKILL after 10 s; removes its metric files."""
        _stop(self.proc)
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
