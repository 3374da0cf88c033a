"""The processes of ``manage.py runstack``: the ASGI server, a Celery worker and beat.

Each part runs as a child process in its own process group, with its output prefixed by
its name. A stop signal (Ctrl-C, SIGTERM, SIGHUP) stops them all; if one of them exits
on its own, the others are stopped too and the run ends with a text naming it. What is
printed goes through the callables given to :class:`Stack`; the command
(wedsync/management/commands/runstack.py) owns the arguments and the styled texts.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from django.conf import settings

from wedsync.server.asgi_server import asgi_server_command, die_with_parent_hook, exit_text

# How long a stopped child may take to exit after SIGTERM before it gets SIGKILL: a
# Celery worker finishes the task at hand (warm shutdown), the server closes its sockets.
GRACE_S = 10.0
# How long the ASGI server may take to answer /healthz after start (Django set-up, the
# first import of every app); past it the stack is stopped and the run fails.
STARTUP_TIMEOUT_S = 60.0
# Between two looks at the children (and, until it answers, at /healthz).
POLL_S = 0.25

# The signals that stop the stack.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Child:
    """One process of the stack: its name (the output prefix), command line and process."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    # What the kernel sends it should runstack die without stopping it (PR_SET_PDEATHSIG).
    orphan_signal: signal.Signals = signal.SIGTERM
    reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _signal_group(child: Child, sig: signal.Signals) -> None:
    """Send a signal to a child's whole process group (the child and anything it forked)."""
    if child.proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.proc.pid, sig)


def worker_command(port: int) -> list[str]:
    """The argv of the stack's Celery worker."""
    return [
        sys.executable, "-m", "celery", "-A", "wedsync", "worker", "-l", "info",
        # solo: the task runs in the worker process itself, so there is no pool of
        # grandchildren to stop (and nothing to leave orphaned).
        "--pool", "solo", "--concurrency", "1",
        # Named after the port, so two stacks on one broker stay apart.
        "-n", f"wedsync-{port}@%h",
        # One worker: nobody to synchronise with at start or gossip to.
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def beat_command(port: int, run_dir: Path) -> list[str]:
    """The argv of the stack's Celery beat, its files in ``run_dir``."""
    return [
        sys.executable, "-m", "celery", "-A", "wedsync", "beat", "-l", "info",
        # Per port, so that two stacks do not fight over one pidfile. The schedule itself
        # is in the database (DatabaseScheduler); the file is only used should someone
        # switch to the default scheduler.
        "--pidfile", str(run_dir / f"beat-{port}.pid"),
        "-s", str(run_dir / f"beat-schedule-{port}"),
    ]  # fmt: skip


def client_host(host: str) -> str:
    """Where to connect to reach a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def url_host(host: str) -> str:
    """``host`` as it goes into a URL to reach a server bound to it (IPv6 in brackets)."""
    client = client_host(host)
    return f"[{client}]" if ":" in client else client


def _allowed_host(host: str) -> str:
    """A Host header the site accepts: the bound address, unless ALLOWED_HOSTS excludes it."""
    allowed = [h for h in settings.ALLOWED_HOSTS if h and h != "*"]
    candidate = url_host(host)
    if "*" in settings.ALLOWED_HOSTS or not allowed or candidate in allowed:
        return candidate
    return allowed[0].lstrip(".")


def probe_healthz(host: str, port: int) -> int | None:
    """The HTTP status of GET /healthz, or None while nothing answers."""
    connection = http.client.HTTPConnection(client_host(host), port, timeout=1)
    try:
        connection.request(
            "GET",
            "/healthz",
            # A Host that ALLOWED_HOSTS accepts. SECURE_SSL_REDIRECT leaves /healthz alone
            # (SECURE_REDIRECT_EXEMPT); the https marker counts only where the proxy
            # header is trusted (DJANGO_SECURE_PROXY_SSL_HEADER).
            headers={"Host": _allowed_host(host), "X-Forwarded-Proto": "https"},
        )
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


class Stack:
    """The child processes of one stack: built, started, supervised and stopped.

    ``say`` prints a line (it is called from the reader threads too, so it must be
    thread-safe); ``warn`` and ``error`` print a warning or an error line (``say`` unless
    given); ``on_ready`` is called once with the status of the first answer to /healthz.
    Building the children raises ValueError for a server/workers combination the ASGI
    server cannot run.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        server: str = "uvicorn",
        workers: int = 1,
        worker: bool = True,
        beat: bool = True,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        say: Callable[[str], None],
        warn: Callable[[str], None] | None = None,
        error: Callable[[str], None] | None = None,
        on_ready: Callable[[int], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.say = say
        self.warn = warn or say
        self.error = error or say
        self.on_ready = on_ready or (lambda status: None)
        self._stop = threading.Event()
        self._signals: list[int] = []
        self.children = [Child("web", asgi_server_command(host, port, server, workers))]
        if worker:
            self.children.append(Child("worker", worker_command(port)))
        if beat:
            run_dir = Path(settings.VAR_DIR) / "run"
            run_dir.mkdir(parents=True, exist_ok=True)
            # Beat holds no work to drain, and its SIGTERM handler saves the schedule
            # through the database: a SIGTERM that lands while beat is still loading that
            # schedule re-enters the same connection and can hang it for good (an orphan
            # beat was seen in CI). Orphaned, beat is killed outright; a normal stop still
            # sends SIGTERM first (shutdown).
            self.children.append(
                Child("beat", beat_command(port, run_dir), orphan_signal=signal.SIGKILL)
            )

    def run(self) -> str | None:
        """Start the stack and supervise it until a stop signal (None) or a child's own
        exit (its description, also printed through ``error``); every child is stopped
        on the way out."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        failure: str | None = None
        try:
            self.start()
            failure = self.supervise()
            if failure:
                self.error(f"runstack: {failure}.")
        finally:
            self.shutdown()
        return failure

    def start(self) -> None:
        """Start every child in its own process group, then relay its output."""
        # Here, not at the top: importing the metrics fixes their directory, which the
        # settings choose; the command imports this module before anything reads them.
        from monitoring.figures import prune_dead_processes

        # The metric files of an earlier run's processes go: the new stack counts afresh
        # and the shared directory does not grow with every restart (docs/monitoring.md).
        prune_dead_processes(counters=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Every child is started before any reader thread: preexec_fn is only safe while
        # this process has a single thread.
        for child in self.children:
            child.proc = subprocess.Popen(
                child.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=settings.BASE_DIR,
                # Its own group: Ctrl-C reaches runstack only, which then stops each
                # child in order; and killpg reaches anything the child forked.
                process_group=0,
                preexec_fn=die_with_parent_hook(child.orphan_signal),
            )
        width = max(len(c.name) for c in self.children) + 3
        for child in self.children:
            assert child.proc is not None
            command = " ".join(["python", *child.argv[1:]])
            self.say(f"runstack: started {child.name} (pid {child.proc.pid}): {command}")
            child.reader = threading.Thread(
                target=self._relay,
                args=(child, f"[{child.name}]".ljust(width)),
                name=f"runstack-{child.name}",
                daemon=True,
            )
            child.reader.start()

    def _relay(self, child: Child, prefix: str) -> None:
        """Copy a child's output to ours, line by line, prefixed by its name."""
        assert child.proc is not None and child.proc.stdout is not None
        stream: IO[bytes] = child.proc.stdout
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.say(prefix + line)
        stream.close()

    def supervise(self) -> str | None:
        """Wait for a stop signal (None) or a child's own exit (its description)."""
        deadline = time.monotonic() + self.startup_timeout
        ready = False
        while not self._stop.is_set():
            for child in self.children:
                if not child.running:
                    assert child.proc is not None
                    return f"{child.name} {exit_text(child.proc.returncode)} on its own"
            if not ready:
                status = probe_healthz(self.host, self.port)
                if status is not None:
                    ready = True
                    self.on_ready(status)
                elif time.monotonic() > deadline:
                    return (
                        "the ASGI server (web) did not answer /healthz within "
                        f"{self.startup_timeout:g} s"
                    )
            self._stop.wait(POLL_S)
        return None

    def shutdown(self) -> None:
        """SIGTERM every child, SIGKILL whatever is left after the grace period, reap all."""
        children = self.children
        running = [c for c in children if c.running]
        if running:
            self.say(
                "runstack: stopping "
                + ", ".join(c.name for c in running)
                + f" (SIGTERM, SIGKILL after {GRACE_S:g} s or on a second Ctrl-C) ..."
            )
        for child in running:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        signals_seen = len(self._signals)
        while any(c.running for c in children) and time.monotonic() < deadline:
            if len(self._signals) > signals_seen:
                break  # Ctrl-C again while stopping: do not wait any longer
            time.sleep(0.1)
        for child in children:
            if child.running:
                self.warn(f"runstack: {child.name} is still running; SIGKILL")
                _signal_group(child, signal.SIGKILL)
        for child in children:
            if child.proc is not None:
                child.proc.wait()
                # Anything the child forked and left in its group goes with it.
                _signal_group(child, signal.SIGKILL)
        for child in children:
            if child.reader is not None:
                child.reader.join(timeout=2)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)
        self._stop.set()
