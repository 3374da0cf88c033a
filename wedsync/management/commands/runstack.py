"""``manage.py runstack``: the whole stack in one terminal (ASGI server, Celery worker, beat).

Each part runs as a child process in its own process group, with its output prefixed by
its name. Ctrl-C (or SIGTERM) stops them all; if one of them exits on its own, the others
are stopped too and the command fails naming it. Made for development and for trying the
product out: production runs each part under its own supervisor.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from wedsync.server.asgi_server import SERVERS, asgi_server_command, die_with_parent_hook, exit_text

# How long a stopped child may take to exit after SIGTERM before it gets SIGKILL: a
# Celery worker finishes the task at hand (warm shutdown), the server closes its sockets.
GRACE_S = 10.0
# How long the ASGI server may take to answer /healthz after start (Django set-up, the
# first import of every app); past it the stack is stopped and the command fails.
STARTUP_TIMEOUT_S = 60.0
# Between two looks at the children (and, until it answers, at /healthz).
POLL_S = 0.25


@dataclass
class Child:
    """One process of the stack: its name (the output prefix), command line and process."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
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


def _hide_password(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Command(BaseCommand):
    help = (
        "Run the whole stack as child processes: the ASGI server (uvicorn), a Celery "
        "worker and Celery beat. Ctrl-C stops everything."
    )
    requires_migrations_checks = True

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to bind the server to")
        parser.add_argument("--port", type=int, default=8000, help="port to bind the server to")
        parser.add_argument(
            "--server",
            choices=SERVERS,
            default="uvicorn",
            help="the ASGI server (docs/adr/0003-asgi-server.md)",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=settings.SERVER_WORKERS,
            help="uvicorn processes sharing the port (default: SERVER_WORKERS); docs/operations.md",
        )
        parser.add_argument(
            "--demo-file",
            default=str(Path(settings.VAR_DIR) / "demo.json"),
            help="JSON from `seed_demo --json`; its logins are printed when it exists",
        )
        parser.add_argument("--no-worker", action="store_true", help="do not start a worker")
        parser.add_argument("--no-beat", action="store_true", help="do not start beat")
        parser.add_argument(
            "--startup-timeout",
            type=float,
            default=STARTUP_TIMEOUT_S,
            help="seconds the ASGI server may take to answer /healthz",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host: str = options["host"]
        port: int = options["port"]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._signals: list[int] = []

        try:
            children = self._children(host, port, options)
        except ValueError as exc:  # daphne with several workers, or fewer than one
            raise CommandError(str(exc)) from None
        self._say(self._mode_text())
        if settings.EMBEDDED:
            self._say(
                self.style.WARNING(
                    "The embedded default is for ONE server process only: its channel layer "
                    "lives in this process, so a second server would not see its events. "
                    "Set REDIS_URL (and DATABASE_URL=postgres://...) to run more."
                )
            )

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        failure: str | None = None
        try:
            self._start(children)
            failure = self._supervise(children, host, port, options)
            if failure:
                self._say(self.style.ERROR(f"runstack: {failure}."))
        finally:
            self._shutdown(children)
        if failure:
            raise CommandError(f"{failure}; the rest of the stack was stopped.", returncode=1)
        self._say("runstack: every process stopped.")

    # --- the children -----------------------------------------------------------------

    def _children(self, host: str, port: int, options: dict[str, Any]) -> list[Child]:
        python = sys.executable
        run_dir = Path(settings.VAR_DIR) / "run"
        children = [
            Child(
                "web",
                asgi_server_command(host, port, options["server"], options["workers"]),
            )
        ]
        if not options["no_worker"]:
            children.append(
                Child(
                    "worker",
                    [
                        python,
                        "-m",
                        "celery",
                        "-A",
                        "wedsync",
                        "worker",
                        "-l",
                        "info",
                        # solo: the task runs in the worker process itself, so there is no
                        # pool of grandchildren to stop (and nothing to leave orphaned).
                        "--pool",
                        "solo",
                        "--concurrency",
                        "1",
                        # Named after the port, so two stacks on one broker stay apart.
                        "-n",
                        f"wedsync-{port}@%h",
                        # One worker: nobody to synchronise with at start or gossip to.
                        "--without-mingle",
                        "--without-gossip",
                    ],
                )
            )
        if not options["no_beat"]:
            run_dir.mkdir(parents=True, exist_ok=True)
            children.append(
                Child(
                    "beat",
                    [
                        python,
                        "-m",
                        "celery",
                        "-A",
                        "wedsync",
                        "beat",
                        "-l",
                        "info",
                        # Per port, so that two stacks do not fight over one pidfile. The
                        # schedule itself is in the database (DatabaseScheduler); the file
                        # is only used should someone switch to the default scheduler.
                        "--pidfile",
                        str(run_dir / f"beat-{port}.pid"),
                        "-s",
                        str(run_dir / f"beat-schedule-{port}"),
                    ],
                )
            )
        return children

    def _start(self, children: list[Child]) -> None:
        from monitoring.figures import prune_dead_processes

        # The metric files of an earlier run's processes go: the new stack counts afresh
        # and the shared directory does not grow with every restart (docs/monitoring.md).
        prune_dead_processes(counters=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        hook = die_with_parent_hook()
        # Every child is started before any reader thread: preexec_fn is only safe while
        # this process has a single thread.
        for child in children:
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
                preexec_fn=hook,
            )
        width = max(len(c.name) for c in children) + 3
        for child in children:
            assert child.proc is not None
            command = " ".join(["python", *child.argv[1:]])
            self._say(f"runstack: started {child.name} (pid {child.proc.pid}): {command}")
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
            self._say(prefix + line)
        stream.close()

    def _supervise(
        self, children: list[Child], host: str, port: int, options: dict[str, Any]
    ) -> str | None:
        """Wait for a stop signal (None) or a child's own exit (its description)."""
        deadline = time.monotonic() + options["startup_timeout"]
        ready = False
        while not self._stop.is_set():
            for child in children:
                if not child.running:
                    assert child.proc is not None
                    return f"{child.name} {exit_text(child.proc.returncode)} on its own"
            if not ready:
                status = self._probe_healthz(host, port)
                if status is not None:
                    ready = True
                    self._say(self._ready_text(host, port, status, options["demo_file"]))
                elif time.monotonic() > deadline:
                    return (
                        "the ASGI server (web) did not answer /healthz within "
                        f"{options['startup_timeout']:g} s"
                    )
            self._stop.wait(POLL_S)
        return None

    def _shutdown(self, children: list[Child]) -> None:
        """SIGTERM every child, SIGKILL whatever is left after the grace period, reap all."""
        running = [c for c in children if c.running]
        if running:
            self._say(
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
                self._say(self.style.WARNING(f"runstack: {child.name} is still running; SIGKILL"))
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

    # --- what is printed ------------------------------------------------------------------

    def _say(self, text: str) -> None:
        with self._lock:
            self.stdout.write(text)
            self.stdout.flush()

    def _probe_healthz(self, host: str, port: int) -> int | None:
        """The HTTP status of GET /healthz, or None while nothing answers."""
        connection = http.client.HTTPConnection(_client_host(host), port, timeout=1)
        try:
            connection.request(
                "GET",
                "/healthz",
                # A Host that ALLOWED_HOSTS accepts, and the proxy's https marker so that
                # SECURE_SSL_REDIRECT leaves the probe alone.
                headers={"Host": _allowed_host(host), "X-Forwarded-Proto": "https"},
            )
            return connection.getresponse().status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()

    def _mode_text(self) -> str:
        database = settings.DATABASES["default"]
        if settings.DATABASE_IS_SQLITE:
            db_text = f"SQLite {database['NAME']}"
        else:
            engine = database["ENGINE"].rsplit(".", 1)[-1]
            where = f"{database.get('HOST') or 'localhost'}:{database.get('PORT') or ''}"
            db_text = f"{engine} {database['NAME']} at {where.rstrip(':')}"
        if settings.EMBEDDED:
            return (
                "runstack: mode: embedded default (no REDIS_URL): in-process channel layer, "
                f"local-memory cache, Celery on filesystem:// in {settings.CELERY_BROKER_DIR}, "
                f"database {db_text}."
            )
        return (
            f"runstack: mode: Redis {_hide_password(settings.REDIS_URL)} "
            f"(channel layer: {settings.CHANNEL_LAYER}, cache tier, Celery broker), "
            f"database {db_text}."
        )

    def _ready_text(self, host: str, port: int, status: int, demo_file: str) -> str:
        base = f"http://{_url_host(host)}:{port}"
        lines = [
            "",
            self.style.SUCCESS(f"WedSync Realtime is up on {base}/")
            + ("" if status == 200 else self.style.WARNING(f" (/healthz answered {status})")),
            f"  site       {base}/  (My Saturday: sign in with a login below)",
            f"  admin      {base}/admin/",
            f"  liveness   {base}/healthz",
            f"  readiness  {base}/readyz",
            f"  websocket  ws://{_url_host(host)}:{port}/ws/realtime/",
        ]
        lines += _demo_lines(Path(demo_file))
        lines += ["Ctrl-C stops everything.", ""]
        return "\n".join(lines)


def _client_host(host: str) -> str:
    """Where to connect to reach a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def _url_host(host: str) -> str:
    client = _client_host(host)
    return f"[{client}]" if ":" in client else client


def _allowed_host(host: str) -> str:
    """A Host header the site accepts: the bound address, unless ALLOWED_HOSTS excludes it."""
    allowed = [h for h in settings.ALLOWED_HOSTS if h and h != "*"]
    candidate = _url_host(host)
    if "*" in settings.ALLOWED_HOSTS or not allowed or candidate in allowed:
        return candidate
    return allowed[0].lstrip(".")


# The banner lists this many weddings; the demo file has them all.
_DEMO_WEDDINGS_SHOWN = 5


def _user(user: Any) -> tuple[str, str] | None:
    """(username, password) of a user entry of the demo file, if it has them."""
    if isinstance(user, dict) and user.get("username"):
        return str(user["username"]), str(user.get("password", "?"))
    return None


def _demo_lines(path: Path) -> list[str]:
    """The demo logins of a ``seed_demo --json`` file, short: staff, then per wedding the
    planner, a photographer and the couple (the password once when, as seed_demo makes
    them, all share it)."""
    if not path.is_file():
        return [f"No demo data at {path} (make it with: manage.py seed_demo --json > {path})."]
    try:
        demo = json.loads(path.read_text())
        weddings = [w for w in demo.get("weddings") or [] if isinstance(w, dict)]
    except (OSError, ValueError, AttributeError) as exc:
        return [f"Could not read the demo data in {path}: {exc}"]
    rows: list[tuple[str, list[tuple[str, tuple[str, str] | None]]]] = []
    if staff := _user(demo.get("staff")):
        rows.append(("staff (admin)", [("", staff)]))
    for wedding in weddings[:_DEMO_WEDDINGS_SHOWN]:

        def first(category: str, wedding: dict = wedding) -> tuple[str, str] | None:
            return next(
                (
                    _user(user)
                    for supplier in wedding.get("suppliers") or []
                    if isinstance(supplier, dict) and supplier.get("category") == category
                    for user in supplier.get("users") or []
                    if _user(user)
                ),
                None,
            )

        topic = str(wedding.get("topic") or f"wedding:{wedding.get('id')}")
        rows.append(
            (
                topic,
                [
                    ("planner", first("planner")),
                    ("photographer", first("photographer")),
                    ("couple", _user(wedding.get("couple"))),
                ],
            )
        )
    passwords = {user[1] for _, logins in rows for _, user in logins if user}
    shared = len(passwords) == 1

    def login(user: tuple[str, str] | None) -> str:
        if user is None:
            return "-"
        return user[0] if shared else f"{user[0]} / {user[1]}"

    lines = [f"Demo logins ({path}):"]
    if shared:
        lines.append(f"  {'password':<14} {passwords.pop()}  (the same for every login)")
    for label, logins in rows:
        lines.append(f"  {label:<14} " + "   ".join(f"{r} {login(u)}".strip() for r, u in logins))
    if len(weddings) > _DEMO_WEDDINGS_SHOWN:
        lines.append(f"  ... and {len(weddings) - _DEMO_WEDDINGS_SHOWN} more wedding(s)")
    return lines
