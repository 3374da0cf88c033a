"""pytest-xdist workers, each with services of its own (loaded with ``-p tests.parallel``).

`make test` runs the suite in ``PYTEST_WORKERS`` processes (pytest-xdist, 2 by default):
most of its time is spent waiting on server processes, browsers and sockets, not on a
core. Workers must not see each other's traffic:

* PostgreSQL: pytest-django gives each worker its own test database (``test_<name>_gw0``,
  ``test_<name>_gw1``, ...).
* Redis: the first worker keeps ``REDIS_URL``; every other worker gets a redis-server of
  its own on a free port. Another database number of the same server would not do: the
  channel layer and presence use Redis pub/sub, whose channels every database of a server
  shares, so one worker's servers would deliver to the other's clients.
* Metrics: each worker its own ``PROMETHEUS_MULTIPROC_DIR`` (tests read the test
  process's counters back from it).

This module runs when pytest loads its plugins, before pytest-django reads the Django
settings, so everything that reads ``REDIS_URL`` (settings, the servers the tests start)
sees the worker's. Outside a worker (``PYTEST_WORKERS=0``, or ``pytest`` run by hand) it
does nothing.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
# prctl(PR_SET_PDEATHSIG): the worker's redis-server ends with it, even after a SIGKILL.
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_redis() -> str:
    """A redis-server of this worker's own (nothing on disk); its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            f"pytest-xdist worker {WORKER} needs a Redis of its own and redis-server is not "
            "installed: install it (apt-get install -y redis-server) or run the suite in "
            "one process (PYTEST_WORKERS=0 make test)"
        )
    for _ in range(5):  # a port taken between choosing and binding: another one
        port = _free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # only prctl, before exec: safe with threads
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        atexit.register(_stop, proc)
                        return f"redis://127.0.0.1:{port}/0"
            except OSError:
                time.sleep(0.05)
        _stop(proc)
    raise RuntimeError(f"pytest-xdist worker {WORKER}: redis-server did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


if WORKER is not None:
    if os.environ.get("REDIS_URL") and WORKER != "gw0":
        os.environ["REDIS_URL"] = _start_redis()
    _metrics = tempfile.mkdtemp(prefix=f"wedsync-metrics-{WORKER}-")
    atexit.register(shutil.rmtree, _metrics, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics
