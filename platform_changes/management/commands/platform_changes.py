"""``python manage.py platform_changes [--create-slot] [--once]``: publish the platform
database's table changes as WedSync events (ADR 0027, docs/integration.md).

Runs until SIGTERM/SIGINT. One process per slot (a Deployment of one replica).
"""

from __future__ import annotations

import signal
from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from platform_changes.consumer import Consumer, Settings
from platform_changes.pgoutput import ProtocolError
from platform_changes.services import Retry
from platform_changes.source import SlotLost, SlotMissing, Source


def _qualified(table: str) -> str:
    """``schema.name`` as pgoutput names a relation (no schema: ``public``)."""
    return table if "." in table else f"public.{table}"


class Command(BaseCommand):
    help = "Publish changes of the platform's timeline table as WedSync events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--create-slot",
            action="store_true",
            help="create the replication slot first if it does not exist (setup)",
        )
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        url = settings.PLATFORM_CHANGES_DATABASE_URL
        if not url:
            raise CommandError("PLATFORM_CHANGES_DATABASE_URL is not set")
        try:
            source = Source(
                url,
                slot=settings.PLATFORM_CHANGES_SLOT,
                publication=settings.PLATFORM_CHANGES_PUBLICATION,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        consumer = Consumer(
            source,
            Settings(
                table=_qualified(settings.PLATFORM_CHANGES_TABLE),
                wedding_column=settings.PLATFORM_CHANGES_WEDDING_COLUMN,
                batch=settings.PLATFORM_CHANGES_BATCH,
                poll_interval=settings.PLATFORM_CHANGES_POLL_INTERVAL,
                heartbeat_interval=settings.PLATFORM_CHANGES_HEARTBEAT_INTERVAL,
                lag_alert_bytes=settings.PLATFORM_CHANGES_LAG_ALERT_BYTES,
            ),
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: consumer.stop())
        try:
            if options["create_slot"] and source.create_slot():
                self.stderr.write(f"created replication slot {source.slot!r}")
            if options["once"]:
                consumer.run_once()
            else:
                self.stderr.write(f"reading slot {source.slot!r} into WedSync events")
                consumer.run_forever()
        except (SlotMissing, SlotLost, ProtocolError) as exc:
            raise CommandError(f"{exc} (docs/integration.md, 'Database changes')") from None
        except Retry as exc:
            raise CommandError(f"nothing stored, try again: {exc}") from None
        except psycopg.Error as exc:
            raise CommandError(f"the platform database: {exc}") from None
        finally:
            source.close()
