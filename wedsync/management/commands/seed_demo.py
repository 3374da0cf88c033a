"""``python manage.py seed_demo --weddings N --vendors-per-wedding M [--json]`` (PROTOCOL §10).

Without ``--json``: a summary for a person (weddings, logins, topics). With ``--json``:
only the JSON document on stdout, for the load benchmark and ``make run``; progress of
large runs goes to stderr either way. An existing "staff" account is never changed: its
``password`` in the JSON is null and the summary says "existing account, password
unchanged".
"""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.tokens import token_issuer
from weddings.demo import MAX_VENDORS_PER_WEDDING, MAX_WEDDINGS, DemoSeedError, seed_demo

# Below this many vendor slots a run takes well under a second: no progress lines.
_PROGRESS_FROM = 200
# The human summary lists this many weddings in full; the JSON always has them all.
_SUMMARY_WEDDINGS = 10


class Command(BaseCommand):
    help = "Create a demo Saturday: weddings with a planner, suppliers, a couple and a timeline."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--weddings", type=int, default=3, metavar="N", help=f"1 to {MAX_WEDDINGS}."
        )
        parser.add_argument(
            "--vendors-per-wedding",
            type=int,
            default=6,
            metavar="M",
            help=f"Suppliers per wedding, the first a planner; 1 to {MAX_VENDORS_PER_WEDDING}.",
        )
        parser.add_argument(
            "--json", action="store_true", help="Print only the JSON document on stdout."
        )
        parser.add_argument(
            "--token-ttl",
            type=int,
            default=None,
            metavar="SECONDS",
            help=f"Lifetime of the tokens (default {settings.REALTIME_TOKEN_TTL}).",
        )

    def handle(self, *args, **options) -> None:
        weddings: int = options["weddings"]
        vendors: int = options["vendors_per_wedding"]
        try:
            result = seed_demo(
                weddings=weddings,
                vendors_per_wedding=vendors,
                progress=self._progress if weddings * vendors >= _PROGRESS_FROM else None,
                issue_token=token_issuer(options["token_ttl"]),
            )
        except (DemoSeedError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(orjson.dumps(result).decode())
        else:
            self._summary(result, vendors)

    def _progress(self, done: int, total: int) -> None:
        # Seeding calls this every ~10 % of the weddings; the last call is always total.
        self.stderr.write(
            f"seed_demo: {done}/{total} weddings ({100 * done // total} %)", style_func=str
        )

    def _summary(self, result: dict[str, Any], vendors: int) -> None:
        weddings = result["weddings"]
        staff = result["staff"]
        password = weddings[0]["couple"]["password"]  # one password per run
        write = self.stdout.write
        write(
            self.style.SUCCESS(
                f"Seeded {len(weddings)} wedding(s) on {weddings[0]['date']}, "
                f"{vendors} supplier(s) each."
            )
        )
        write(f"Every login of this run has the password: {password}")
        name = staff["username"]
        if staff["password"] is None:  # an existing account is never changed
            write(f"Staff (admin, topic ops): {name}: existing account, password unchanged")
        else:
            write(f"Staff (admin, topic ops): {name} (new, with this run's password)")
        for wedding in weddings[:_SUMMARY_WEDDINGS]:
            suppliers = wedding["suppliers"]
            write("")
            write(
                f"{wedding['topic']}  {wedding['name']} at {wedding['venue']}, "
                f"ceremony {wedding['ceremony_time']} ({wedding['time_zone']}), "
                f"{wedding['guest_count']} guests"
            )
            write(f"  planner: {suppliers[0]['users'][0]['username']}")
            write(f"  couple:  {wedding['couple']['username']}")
            others = [s["users"][0]["username"] for s in suppliers[1:]]
            if others:
                shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
                write(f"  {len(others)} other supplier login(s): {shown}")
        if len(weddings) > _SUMMARY_WEDDINGS:
            write(f"\n... and {len(weddings) - _SUMMARY_WEDDINGS} more wedding(s).")
        write(
            "\nTokens for ?token=: python manage.py issue_token USERNAME "
            "(or rerun with --json to get one for every login)."
        )
