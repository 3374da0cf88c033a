"""``python manage.py loadtest SCENARIO [options]``: the load benchmark (docs/benchmarks.md).

Seeds its own weddings through ``seed_demo``'s code into this process's database,
starts a server on it (uvicorn by default; ``--url`` to use a running one instead,
which must use the same database), runs the scenario with receivers in ``--processes``
worker processes, prints progress on stderr and a table on stdout, and writes the whole
report as JSON with ``--json PATH``. Scenarios and their options: ``--help``, and
``bench/loadtest/scenarios.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from bench.loadtest import report as reporting
from bench.loadtest.procstat import ProcSampler, server_pids
from bench.loadtest.runner import Target, run_scenario, weddings_needed
from bench.loadtest.scenarios import SCENARIOS, ScenarioError, scenario_from_options
from bench.loadtest.seeding import database_kind, remove_seeded, seed_weddings
from bench.loadtest.server import (
    StartedServer,
    channel_layer_name,
    http_address,
    wait_healthy,
)
from bench.loadtest.worker import event_loop_factory, raise_open_file_limit
from wedsync.server.asgi_server import SERVERS, asgi_server_command

# (option, type, help); dest is the scenario field of the same name.
_OPTIONS: list[tuple[str, Any, str, str]] = [
    ("--connections", int, "N", "receiver connections (saturday-peak, reconnect-storm)"),
    ("--per-wedding", int, "N", "receivers (or connections) per wedding"),
    ("--weddings", int, "N", "weddings (fanout-max, snapshot-read)"),
    ("--rate", float, "R", "publishes/s (or requests/s for snapshot-read) in total"),
    ("--duration", float, "S", "seconds of publishing (or requests)"),
    ("--drain-timeout", float, "S", "seconds to wait for the last deliveries"),
    ("--start-rate", float, "R", "fanout-max: publishes/s of the first step"),
    ("--step-rate", float, "R", "fanout-max: publishes/s added per step"),
    ("--max-rate", float, "R", "fanout-max: the last step's rate at most"),
    ("--step-duration", float, "S", "fanout-max: seconds per step"),
    ("--p99-limit", float, "MS", "fanout-max: a step passes with p99 at most this"),
    ("--levels", str, "N,N,...", "connections-max: connection counts (default 1000,5000,10000)"),
    ("--concurrency", int, "N", "connections-max: handshakes in flight"),
    ("--settle", float, "S", "connections-max: idle seconds before each RSS reading"),
    ("--hold", float, "S", "connections-max: hold the last level S seconds, RSS every 30 s"),
    ("--before", float, "S", "reconnect-storm: seconds of publishing before the drop"),
    ("--after", float, "S", "reconnect-storm: seconds of publishing after the drop"),
    ("--recovery-timeout", float, "S", "reconnect-storm: seconds to catch up"),
    ("--clients", int, "N", "snapshot-read: concurrent HTTP clients"),
    ("--members", int, "N", "hostile-member: receiving members of the wedding (default 40)"),
    ("--flood-connections", int, "N", "hostile-member: the flooder's WebSocket connections"),
    ("--flood-http", int, "N", "hostile-member: the flooder's HTTP clients"),
    ("--flood-kinds", str, "K,K,...", "hostile-member: what the flooder sends (default all)"),
    (
        "--prune-at",
        int,
        "N",
        "hostile-member: prune again as if retention kept N events per"
        " topic (every topic of the database: a scratch database only)",
    ),
    ("--calibrate", float, "S", "overload: seconds measuring the process's capacity"),
    ("--factor", float, "X", "overload: the offered rate, x the measured capacity"),
    ("--processes", int, "N", "generator processes for the receivers (default 1)"),
]
_DEST = {"--p99-limit": "p99_limit_ms"}
# 127.0.0.1 to 127.0.0.N; 64 x ~28,000 ephemeral ports is far past any run on one host.
MAX_SOURCE_ADDRESSES = 64


class Command(BaseCommand):
    help = "Run a load benchmark scenario against a real server; table + JSON report."

    def add_arguments(self, parser: CommandParser) -> None:
        lines = [f"{name}: {cls.summary}" for name, cls in SCENARIOS.items()]
        parser.add_argument("scenario", choices=list(SCENARIOS), help="; ".join(lines))
        for option, kind, metavar, text in _OPTIONS:
            dest = _DEST.get(option, option[2:].replace("-", "_"))
            parser.add_argument(option, dest=dest, type=kind, metavar=metavar, help=text)
        parser.add_argument(
            "--no-subscribe", dest="subscribe", action="store_false", default=None,
            help="connections-max: connect without subscribing",
        )  # fmt: skip
        parser.add_argument(
            "--url", help="a running server's ws://HOST:PORT/ws/realtime/ (on this database)"
        )
        parser.add_argument(
            "--server-pid", type=int, action="append", default=[], metavar="PID",
            help="with --url: PIDs to sample (default: whoever listens on the port, and a"
            " wedsync.serve supervisor above them)",
        )  # fmt: skip
        parser.add_argument("--server", choices=SERVERS, default="uvicorn")
        parser.add_argument(
            "--server-workers", type=int, default=1, metavar="N",
            help="uvicorn processes sharing the started server's port (default 1)",
        )  # fmt: skip
        parser.add_argument(
            "--server-env", action="append", default=[], metavar="KEY=VALUE",
            help="an environment variable for the started server (repeatable)",
        )  # fmt: skip
        parser.add_argument(
            "--source-addresses", type=int, default=1, metavar="N",
            help="the receivers connect from 127.0.0.1 to 127.0.0.N in turn (default 1): one"
            " address reaches one server port from ~28,000 ephemeral ports at most",
        )  # fmt: skip
        parser.add_argument("--json", type=Path, default=None, metavar="PATH")
        parser.add_argument(
            "--cleanup",
            action="store_true",
            help="a benchmark of a live deployment: leave the staff user alone and delete"
            " what was seeded once the run is over",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["scenario"]
        scenario = self._scenario(name, options)
        overrides = self._server_env(options["server_env"])
        workers = options["server_workers"]
        if options["url"] and (overrides or options["server"] != "uvicorn" or workers != 1):
            raise CommandError(
                "--server, --server-env and --server-workers apply to a started server, not --url"
            )
        try:  # daphne takes one process per port; at least one worker
            asgi_server_command("127.0.0.1", 0, options["server"], workers)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        sources = self._source_addresses(options["source_addresses"], options["url"])
        nofile = raise_open_file_limit()
        weddings, per_wedding = weddings_needed(scenario)
        self._say(f"seeding {weddings} weddings x {per_wedding} suppliers ({database_kind()})")
        world = seed_weddings(
            weddings, per_wedding, progress=self._seeded, with_staff=not options["cleanup"]
        )
        started: StartedServer | None = None
        try:
            if options["url"]:
                target = self._external(options["url"], options["server_pid"])
            else:
                kind = options["server"] + (f", {workers} workers" if workers > 1 else "")
                self._say(f"starting {kind}")
                started = server = StartedServer(
                    options["server"], overrides, Path(settings.BASE_DIR) / "var", workers
                )
                target = Target(
                    started.ws_url, "127.0.0.1", started.port,
                    {"kind": kind, "url": started.ws_url, "started": True,
                     "workers": workers, "channel_layer": started.channel_layer,
                     "database": database_kind(), "env": overrides, "pids": started.pids,
                     "log": str(started.log_path)},
                    # Looked up at each sample: a worker replaced mid-run still counts.
                    ProcSampler(lambda: server.pids),
                )  # fmt: skip
            target.server["generator_open_file_limit"] = nofile
            if sources:
                target.source_addresses = sources
                target.server["generator_source_addresses"] = list(sources)
            head = reporting.header(scenario, target.server)
            self._say(f"server at {target.ws_url}; sampling PIDs {target.server['pids']}")
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                result = runner.run(run_scenario(scenario, world, target, self._say))
        except (RuntimeError, OSError) as exc:
            detail = f"\n{started.output()}" if started is not None else ""
            raise CommandError(f"loadtest {name} failed: {exc}{detail}") from exc
        finally:
            if started is not None:
                started.stop()
            if options["cleanup"]:
                removed = remove_seeded([w.id for w in world])
                self._say(f"removed the {removed} seeded weddings, their suppliers and users")
        head["machine"]["load_average_at_end"] = reporting.load_average()
        report = {**head, **result}
        self.stdout.write(reporting.render(report))
        if options["json"] is not None:
            reporting.write_json(options["json"], report)
            self._say(f"report written to {options['json']}")
        self.report = report  # for callers of call_command (the tests)

    def _scenario(self, name: str, options: dict[str, Any]):
        fields = set(SCENARIOS[name].__dataclass_fields__)
        dests = {option: _DEST.get(option, option[2:].replace("-", "_")) for option, *_ in _OPTIONS}
        dests["--no-subscribe"] = "subscribe"
        stray = [o for o, d in dests.items() if d not in fields and options.get(d) is not None]
        if stray:
            raise CommandError(f"{', '.join(stray)} does not apply to {name}")
        try:
            return scenario_from_options(name, options)
        except ScenarioError as exc:
            raise CommandError(str(exc)) from None

    def _source_addresses(self, count: int, url: str | None) -> tuple[str, ...]:
        """``--source-addresses``: 127.0.0.1 to 127.0.0.N (loopback: Linux answers every
        127/8 address on ``lo``); () for one, the system's choice."""
        if not 1 <= count <= MAX_SOURCE_ADDRESSES:
            raise CommandError(
                f"--source-addresses must be between 1 and {MAX_SOURCE_ADDRESSES}, not {count}"
            )
        if count == 1:
            return ()
        try:
            host = http_address(url)[0] if url is not None else "127.0.0.1"
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not host.startswith("127."):
            raise CommandError("--source-addresses needs a server on loopback (127.x) to reach")
        return tuple(f"127.0.0.{n}" for n in range(1, count + 1))

    def _server_env(self, pairs: list[str]) -> dict[str, str]:
        env = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise CommandError(f"--server-env takes KEY=VALUE, not {pair!r}")
            env[key] = value
        return env

    def _external(self, url: str, pids: list[int]) -> Target:
        try:
            host, port = http_address(url)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        wait_healthy(host, port, 10)
        if not pids:
            pids = server_pids(port)
        env = {"REDIS_URL": settings.REDIS_URL, "CHANNEL_LAYER": settings.CHANNEL_LAYER}
        server = {
            "kind": "external", "url": url, "started": False, "pids": sorted(set(pids)),
            "channel_layer": channel_layer_name(env) + " (assumed: this process's settings)",
            "database": database_kind(),
        }  # fmt: skip
        return Target(url, host, port, server, ProcSampler(server["pids"]) if pids else None)

    def _seeded(self, done: int, total: int) -> None:
        self._say(f"seeded {done}/{total} weddings")

    def _say(self, line: str) -> None:
        self.stderr.write(f"loadtest: {line}", style_func=str)
