"""``manage.py webhooks_redeliver --endpoint ID --topic T --from-seq N``: deliver an
endpoint's events of a topic again from seq N on, in order (ADR 0023)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.errors import RealtimeError
from webhooks.models import Endpoint
from webhooks.receivers import kick
from webhooks.services import endpoint_redeliver


class Command(BaseCommand):
    help = "Deliver an endpoint's events of a topic again, in seq order, from a given seq."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--endpoint", type=int, required=True, help="the endpoint's id")
        parser.add_argument("--topic", required=True, help="e.g. wedding:12")
        parser.add_argument("--from-seq", type=int, required=True, help="the first seq sent")
        parser.add_argument(
            "--no-kick", action="store_true", help="leave the run to the next sweep"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = endpoint_redeliver(
                endpoint_id=options["endpoint"],
                topic=options["topic"],
                from_seq=options["from_seq"],
            )
        except Endpoint.DoesNotExist as exc:
            raise CommandError(f"no endpoint {options['endpoint']}") from exc
        except (ValueError, RealtimeError) as exc:
            raise CommandError(str(exc)) from exc
        if not options["no_kick"]:
            kick([options["endpoint"]])
        self.stdout.write(
            f"endpoint {options['endpoint']}: {options['topic']} redelivered from seq"
            f" {options['from_seq']} ({count} recorded delivery(ies) made pending)"
        )
