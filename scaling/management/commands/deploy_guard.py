"""``python manage.py deploy_guard [--hours 6] [--force --reason TEXT]``: for release
pipelines. Exits 1, listing them, while any wedding is in its window (2 h before the
ceremony to the end of its timeline) now or within the next ``--hours``; 0 when clear.
``--force`` (with a ``--reason``) lets the deploy through and records it: a WARNING log
line and a ``deploy.forced`` event on the ``ops`` topic. Exit 2: bad arguments; exit 3:
the database cannot be read (a deploy is refused when the guard cannot tell).
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import zoneinfo

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils import timezone

from realtime.models import Event
from realtime.services import event_publish_system
from scaling.decisions import ScalingPolicy
from scaling.demand import UTC
from scaling.selectors import weddings_in_window
from weddings.models import Wedding

logger = logging.getLogger("scaling.deploy_guard")
# A wedding's window opens this long before its ceremony (the Saturday protocol's).
WINDOW_LEAD = ScalingPolicy.window_lead


class Command(BaseCommand):
    help = "Refuse a deploy (exit 1) while weddings are live or start within N hours."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--hours",
            type=float,
            default=6.0,
            help="Also refuse for weddings whose window starts within this many hours (6).",
        )
        parser.add_argument(
            "--force", action="store_true", help="Deploy anyway (needs --reason; recorded)."
        )
        parser.add_argument("--reason", default="", help="Why the deploy is forced.")

    def handle(self, *args, hours: float, force: bool, reason: str, **options) -> None:
        if hours < 0:
            raise CommandError("--hours must not be negative.", returncode=2)
        reason = reason.strip()
        if force and not reason:
            raise CommandError("--force needs --reason (it is recorded).", returncode=2)
        now = timezone.now()
        try:
            plans = weddings_in_window(now=now, hours=hours, lead=WINDOW_LEAD)
            weddings = Wedding.objects.in_bulk([p.wedding_id for p in plans])
        except DatabaseError as exc:
            # Fail closed, but distinguishably: "cannot tell" is not "weddings are live".
            raise CommandError(f"cannot read the weddings ({exc}); refusing", returncode=3) from exc
        lines = []
        for plan in plans:
            wedding = weddings[plan.wedding_id]
            local = plan.ceremony_utc.astimezone(zoneinfo.ZoneInfo(wedding.time_zone))
            opens = plan.ceremony_utc - WINDOW_LEAD
            state = "in progress" if opens <= now else f"window opens in {_hours(opens - now)}"
            lines.append(
                f"  #{wedding.pk} {wedding}: ceremony {local:%Y-%m-%d %H:%M} {wedding.time_zone} "
                f"({plan.ceremony_utc.astimezone(UTC):%H:%M} UTC), window until "
                f"{plan.window_end_utc.astimezone(UTC):%Y-%m-%d %H:%M} UTC, {state}"
            )
        if force:
            user = _who()
            logger.warning(
                "deploy forced by %s past %d wedding(s) in their window: %s",
                user, len(plans), reason,
            )  # fmt: skip
            event_publish_system(
                "ops",
                "deploy.forced",
                {
                    "reason": reason,
                    "by": user,
                    "hours": hours,
                    "weddings": [p.wedding_id for p in plans],
                },
                Event.Priority.CRITICAL if plans else Event.Priority.NORMAL,
            )
            self.stdout.write(f"deploy forced ({len(plans)} wedding(s) in window): {reason}")
            for line in lines:
                self.stdout.write(line)
            return
        if plans:
            self.stderr.write(
                f"deploy blocked: {len(plans)} wedding(s) in progress or starting within "
                f"{hours:g} h:"
            )
            for line in lines:
                self.stderr.write(line)
            raise CommandError(
                "weddings are live; deploy later or use --force --reason TEXT", returncode=1
            )
        self.stdout.write(f"clear: no wedding in progress or starting within {hours:g} h")


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


def _hours(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"
