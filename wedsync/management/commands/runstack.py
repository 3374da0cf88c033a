"""``manage.py runstack``: the whole stack in one terminal (ASGI server, Celery worker, beat).

Each part runs as a child process in its own process group, with its output prefixed by
its name. Ctrl-C (or SIGTERM) stops them all; if one of them exits on its own, the others
are stopped too and the command fails naming it. Made for development and for trying the
product out: production runs each part under its own supervisor.

This module holds the arguments and what is printed; the processes themselves (start,
supervision, shutdown) are wedsync/server/runstack.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from wedsync.server.asgi_server import SERVERS
from wedsync.server.runstack import STARTUP_TIMEOUT_S, Stack, url_host


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

        try:
            stack = Stack(
                host,
                port,
                server=options["server"],
                workers=options["workers"],
                worker=not options["no_worker"],
                beat=not options["no_beat"],
                startup_timeout=options["startup_timeout"],
                say=self._say,
                warn=lambda text: self._say(self.style.WARNING(text)),
                error=lambda text: self._say(self.style.ERROR(text)),
                on_ready=lambda status: self._say(
                    self._ready_text(host, port, status, options["demo_file"])
                ),
            )
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

        failure = stack.run()
        if failure:
            raise CommandError(f"{failure}; the rest of the stack was stopped.", returncode=1)
        self._say("runstack: every process stopped.")

    # --- what is printed ------------------------------------------------------------------

    def _say(self, text: str) -> None:
        """Print a line; the children's reader threads print through here too."""
        with self._lock:
            self.stdout.write(text)
            self.stdout.flush()

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
        base = f"http://{url_host(host)}:{port}"
        lines = [
            "",
            self.style.SUCCESS(f"WedSync Realtime is up on {base}/")
            + ("" if status == 200 else self.style.WARNING(f" (/healthz answered {status})")),
            f"  site       {base}/  (My Saturday: sign in with a login below)",
            f"  admin      {base}/admin/",
            f"  liveness   {base}/healthz",
            f"  readiness  {base}/readyz",
            f"  websocket  ws://{url_host(host)}:{port}/ws/realtime/",
        ]
        lines += _demo_lines(Path(demo_file))
        lines += ["Ctrl-C stops everything.", ""]
        return "\n".join(lines)


# The banner lists this many weddings; the demo file has them all.
_DEMO_WEDDINGS_SHOWN = 5


_OWN_PASSWORD = "(its own password)"  # noqa: S105 (a label, not a password)


def _user(user: Any) -> tuple[str, str] | None:
    """(username, password) of a user entry of the demo file, if it has them."""
    if isinstance(user, dict) and user.get("username"):
        password = user.get("password", "?")
        # None: an account that existed before seed_demo ran, whose password it left alone.
        return str(user["username"]), _OWN_PASSWORD if password is None else str(password)
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
    passwords = {user[1] for _, logins in rows for _, user in logins if user} - {_OWN_PASSWORD}
    shared = len(passwords) == 1

    def login(user: tuple[str, str] | None) -> str:
        if user is None:
            return "-"
        return user[0] if shared and user[1] != _OWN_PASSWORD else f"{user[0]} / {user[1]}"

    lines = [f"Demo logins ({path}):"]
    if shared:
        lines.append(f"  {'password':<14} {passwords.pop()}  (the same for every login)")
    for label, logins in rows:
        lines.append(f"  {label:<14} " + "   ".join(f"{r} {login(u)}".strip() for r, u in logins))
    if len(weddings) > _DEMO_WEDDINGS_SHOWN:
        lines.append(f"  ... and {len(weddings) - _DEMO_WEDDINGS_SHOWN} more wedding(s)")
    return lines
