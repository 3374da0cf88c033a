"""``python manage.py stream_epoch [--bump --reason TEXT]``: the stream epoch (PROTOCOL §4,
v1.1; ``realtime.epoch``).

Without options it prints the current epoch. ``--bump --reason TEXT`` starts a new
history: run it after every point-in-time restore of the database, before the servers
take traffic (docs/operations.md); the disaster-recovery toolkit calls exactly
``stream_epoch --bump --reason "restored to <time>"``. Running server processes answer with
the new epoch within ``EPOCH_BOUND`` seconds, and close the connections subscribed under
the old one.

The epoch is the last line on stdout, alone, so ``EPOCH=$(python manage.py stream_epoch)``
works; when and why it was set goes to stderr. Exit status 1 with a one-line error for a
missing reason or an unreachable database.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from realtime.epoch import EPOCH_BOUND, MAX_REASON_CHARS, epoch_load, stream_epoch_bump
from realtime.models import StreamEpoch


class Command(BaseCommand):
    help = "Print the stream epoch; with --bump --reason TEXT, start a new one (after a restore)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--bump",
            action="store_true",
            help=(
                "Replace the epoch with a fresh one: clients holding positions from before "
                "reload their state instead of resuming (after a restore of the database)."
            ),
        )
        parser.add_argument(
            "--reason",
            default=None,
            metavar="TEXT",
            help=f"Why (required with --bump, at most {MAX_REASON_CHARS} characters).",
        )

    def handle(self, *args, bump: bool, reason: str | None, **options) -> None:
        if reason is not None and not bump:
            raise CommandError("--reason goes with --bump")
        if bump and (reason is None or not reason.strip()):
            raise CommandError('--bump needs --reason TEXT, e.g. --reason "restored to 14:05 UTC"')
        try:
            if bump:
                previous = StreamEpoch.objects.filter(pk=StreamEpoch.ROW).first()
                row = stream_epoch_bump(reason=reason)
            else:
                epoch_load()  # makes the row when the table is empty
                row = StreamEpoch.objects.get(pk=StreamEpoch.ROW)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
            raise CommandError(f"the database is unreachable: {first_line}") from None
        if bump:
            self.stderr.write(
                f"Stream epoch {previous.epoch if previous else '(none)'} -> {row.epoch} "
                f"({row.reason}). Running server processes answer with it within "
                f"{EPOCH_BOUND:g} s and close the connections subscribed before.",
                style_func=str,
            )
        else:
            why = f": {row.reason}" if row.reason else ""
            self.stderr.write(
                f"Stream epoch since {row.changed_at:%Y-%m-%d %H:%M:%S} UTC{why}",
                style_func=str,
            )
        self.stdout.write(row.epoch)
