"""``python manage.py warm_cache [--horizon-hours H]``: warm the cache now, as beat does.

Progress goes to stderr, the summary to stdout.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from scaling.warming import cache_warm


class Command(BaseCommand):
    help = "Warm snapshots, guests and access entries of weddings about to start."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--horizon-hours",
            type=float,
            default=None,
            metavar="H",
            help=(
                "Warm weddings whose ceremony is within the next H hours (or started in the "
                f"last hour); default {settings.CACHE_WARM_HORIZON_HOURS}."
            ),
        )

    def handle(self, *args, horizon_hours: float | None, **options) -> None:
        if horizon_hours is not None and horizon_hours < 0:
            raise CommandError("--horizon-hours must not be negative.")
        result = cache_warm(horizon_hours=horizon_hours, progress=self._progress)
        self.stdout.write(
            self.style.SUCCESS(
                f"Warmed {result['weddings']} wedding(s): {result['snapshots']} snapshot(s), "
                f"{result['guest_lists']} guest list(s), {result['users']} access "
                f"entr{'y' if result['users'] == 1 else 'ies'}, {result['vendors']} coordinator "
                f"entr{'y' if result['vendors'] == 1 else 'ies'} ({len(result['keys'])} keys)."
            )
        )

    def _progress(self, done: int, total: int) -> None:
        self.stderr.write(
            f"warm_cache: {done}/{total} entries ({100 * done // total} %)", style_func=str
        )
