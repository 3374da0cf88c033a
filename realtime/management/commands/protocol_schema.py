"""``manage.py protocol_schema [--output PATH]``: the JSON Schema of the WebSocket frames,
made from their types (``realtime/schema.py``); ``make schema`` writes
docs/protocol.schema.json with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from realtime.schema import protocol_schema_text


class Command(BaseCommand):
    help = "Write the JSON Schema of the WebSocket frames (to stdout, or to --output)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", help="the file to write, e.g. docs/protocol.schema.json")

    def handle(self, *args: Any, **options: Any) -> None:
        text = protocol_schema_text()
        if options["output"]:
            Path(options["output"]).write_text(text)
            self.stderr.write(f"wrote {options['output']}")
        else:
            self.stdout.write(text, ending="")
