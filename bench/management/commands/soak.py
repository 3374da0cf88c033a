"""``python manage.py soak [options]``: the Saturday soak (docs/benchmarks.md).

Starts its own world (a private Redis, ``wedsync.serve`` with ``--workers`` processes,
in a network namespace where one can be made, and the alert evaluator), seeds weddings
into this process's database (PostgreSQL only), runs saturday-peak's load for
``--duration`` seconds while injecting the faults on a schedule, then proves delivery,
memory and alerts; prints progress on stderr, a table on stdout, writes ``--json PATH``
and exits 1 when a proof fails. The code is in ``bench/soak/``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from bench.loadtest import report as reporting
from bench.loadtest.seeding import database_kind, seed_weddings
from bench.loadtest.worker import event_loop_factory, raise_open_file_limit
from bench.soak import proofs
from bench.soak.faults import KINDS
from bench.soak.run import Soak, SoakOptions
from bench.soak.world import World

# (option, type, metavar, help); dest is the SoakOptions field of the same name.
_OPTIONS: list[tuple[str, Any, str, str]] = [
    ("--duration", float, "S", "seconds of load, faults included (default 1800)"),
    ("--connections", int, "N", "receiver connections (default 1000)"),
    ("--weddings", int, "N", "weddings; connections are spread over them (default 25)"),
    ("--rate", float, "R", "publishes/s in total (default 50)"),
    ("--processes", int, "N", "generator processes for the receivers (default 2)"),
    ("--workers", int, "N", "server worker processes (default 2)"),
    ("--cycles", int, "N", "times the faults are injected, in turn (default 1)"),
    ("--warmup", float, "S", "seconds before the first fault, and the RSS baseline (120)"),
    ("--redis-down", float, "S", "seconds Redis stays stopped (default 75)"),
    ("--stall", float, "S", "seconds the server's link is held (default 2)"),
    ("--evaluate-every", float, "S", "seconds between alert evaluations (default 60, as beat)"),
    ("--clear-minutes", int, "M", "ALERT_CLEAR_MINUTES of the soak's world (default 5)"),
    ("--sample-every", float, "S", "seconds between RSS samples (default 5)"),
    ("--progress-every", float, "S", "seconds between progress lines (default 10)"),
    ("--drain-timeout", float, "S", "seconds to wait for the last deliveries (default 30)"),
    ("--rss-bound-pct", float, "P", "allowed RSS growth, %% of the baseline (default 25)"),
    ("--rss-bound-mib", float, "MIB", "allowed RSS growth at least this (default 40)"),
]


class Command(BaseCommand):
    help = "The Saturday soak: saturday-peak's load with faults; proves delivery, memory, alerts."

    def add_arguments(self, parser: CommandParser) -> None:
        for option, kind, metavar, text in _OPTIONS:
            parser.add_argument(option, dest=option[2:].replace("-", "_"), type=kind,
                                metavar=metavar, help=text)  # fmt: skip
        parser.add_argument(
            "--faults", default=",".join(KINDS), metavar="K,K,...",
            help=f"which faults, in this order (default {','.join(KINDS)})",
        )  # fmt: skip
        parser.add_argument("--json", type=Path, default=None, metavar="PATH")

    def handle(self, *args: Any, **options: Any) -> None:
        soak_options = self._options(options)
        if database_kind() != "postgresql":
            raise CommandError(
                "soak needs PostgreSQL (DATABASE_URL=postgres://...): it terminates the "
                f"server's backends with pg_terminate_backend; this database is {database_kind()}"
            )
        raise_open_file_limit()
        o = soak_options
        head = {
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "parameters": o.as_dict(),
            "machine": reporting.machine(),
        }
        self._say(f"seeding {o.weddings} weddings x {o.per_wedding} suppliers")
        weddings = seed_weddings(o.weddings, o.per_wedding)
        leftovers = proofs.resolve_leftovers()
        if leftovers:
            self._say(f"resolved {len(leftovers)} alerts an earlier run left open")
        world = None
        try:
            world = World(
                workers=o.workers, want_stall="stall" in o.faults,
                clear_minutes=o.clear_minutes, log_dir=Path(settings.BASE_DIR) / "var",
                say=self._say,
            )  # fmt: skip
            head["world"] = {
                "server_url": world.server.ws_url,
                "workers": o.workers,
                "link": "namespace, " + ("tap relay" if world.network.relay else "tc netem")
                if world.network is not None
                else "loopback (no namespace)",
                "stall_unavailable": world.stall_unavailable,
                "redis_port": world.redis.port,
                "server_log": str(world.server.log_path),
                "leftover_alerts_resolved": leftovers,
            }
            soak = Soak(o, world, weddings, self._say)
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                result = runner.run(soak.run())
            memory = soak.rss.verdict(o.warmup, o.rss_bound_pct, o.rss_bound_mib)
        except (RuntimeError, OSError) as exc:
            detail = f"\n{world.server.output()}" if world and world.server else ""
            raise CommandError(f"soak failed: {exc}{detail}") from exc
        finally:
            if world is not None:
                world.close()
        alerts = proofs.alerts_since(result["started_wall"])
        report = {**head, **result, "alerts": alerts}
        report["machine"]["load_average_at_end"] = reporting.load_average()
        report["proofs"] = {
            "delivery": proofs.delivery_proof(result),
            "memory": proofs.memory_proof(memory),
            "alerts": proofs.alert_proof(result["faults"], alerts, result["ended_wall"]),
        }
        report["passed"] = all(p["passed"] for p in report["proofs"].values())
        report["acked"] = {t: len(s) for t, s in result["acked"].items()}  # counts, not seqs
        self.stdout.write(proofs.render(report))
        if options["json"] is not None:
            reporting.write_json(options["json"], report)
            self._say(f"report written to {options['json']}")
        self.report = report  # for callers of call_command (the tests)
        if not report["passed"]:
            raise CommandError("soak: a proof failed (see the table)", returncode=1)

    def _options(self, options: dict[str, Any]) -> SoakOptions:
        given = {
            option[2:].replace("-", "_"): options[option[2:].replace("-", "_")]
            for option, *_ in _OPTIONS
            if options.get(option[2:].replace("-", "_")) is not None
        }
        kinds = tuple(k.strip() for k in options["faults"].split(",") if k.strip())
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or len(set(kinds)) != len(kinds):
            raise CommandError(f"--faults takes distinct kinds of {', '.join(KINDS)}, not {kinds}")
        o = SoakOptions(**given, faults=kinds)
        checks = [
            (o.duration > 0, "--duration must be positive"),
            (o.connections >= o.weddings >= 1, "--connections must be at least --weddings (>= 1)"),
            (0 < o.rate <= 2000, "--rate must be between 0 and 2000"),
            (1 <= o.processes <= o.connections, "--processes must be between 1 and --connections"),
            (o.workers >= 2, "--workers must be at least 2 (one is killed, the other serves)"),
            (o.cycles >= 1, "--cycles must be at least 1"),
            (o.evaluate_every >= 1, "--evaluate-every must be at least 1 s"),
            (o.clear_minutes >= 0, "--clear-minutes must be at least 0"),
            (o.sample_every > 0 and o.progress_every > 0, "sampling intervals must be positive"),
            (o.redis_down > 0 and o.stall > 0, "--redis-down and --stall must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise CommandError(message)
        first, last = o.fault_window()
        count = len(kinds) * o.cycles
        # Each fault needs its own length and an evaluation before the next one comes.
        gap = (last - first) / (count - 1) if count > 1 else 0.0
        needed = max(o.redis_down, o.stall) + o.evaluate_every
        if kinds and (last < first or (count > 1 and gap < needed)):
            raise CommandError(
                f"--duration {o.duration:g} is too short for {count} faults: they start after "
                f"--warmup ({o.warmup:g} s), at least {needed:g} s apart (the longest fault and "
                f"an evaluation), and the last needs {o.reserve:g} s after it (its own length, "
                "evaluations and --clear-minutes); lengthen --duration or shorten those"
            )
        return o

    def _say(self, line: str) -> None:
        self.stderr.write(f"soak: {line}", style_func=str)
