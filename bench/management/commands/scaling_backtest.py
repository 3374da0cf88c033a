"""``python manage.py scaling_backtest [--days 730] [--seed 7] [--json PATH]``: replay a
synthetic wedding calendar through the demand model and ``decide()``.

Progress goes to stderr, the table to stdout; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from bench.backtest import replay, synthetic_history


class Command(BaseCommand):
    help = (
        "Backtest the demand model and the scaling decisions on a synthetic wedding "
        "calendar: forecast MAPE vs seasonal-naive and reactive-only, under-capacity "
        "minutes and capacity-hours per policy."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=730, help="Days to replay (730).")
        parser.add_argument("--seed", type=int, default=7, help="Random seed (7).")
        parser.add_argument("--start", default="2025-01-01", help="First day, UTC (2025-01-01).")
        parser.add_argument(
            "--weddings-per-year",
            type=int,
            default=5000,
            help="Weddings booked per calendar year (5000).",
        )
        parser.add_argument(
            "--history-weeks",
            type=int,
            default=8,
            help="Weeks of history the correction learns from (8).",
        )
        parser.add_argument(
            "--min-truth",
            type=float,
            default=100.0,
            help="MAPE counts slots with more connections than this (100).",
        )
        parser.add_argument(
            "--without-protocol",
            action="store_true",
            help="Also replay the demand model without the Saturday protocol (~15 s more).",
        )
        parser.add_argument(
            "--model-profile",
            action="store_true",
            help="Give every wedding the demand model's own load profile (default: each "
            "wedding a profile of its own, which the model does not know).",
        )
        parser.add_argument(
            "--price-per-process-hour",
            type=float,
            metavar="PRICE",
            help="Price of an ASGI process-hour: adds each policy's cost to the figures.",
        )
        parser.add_argument(
            "--price-per-worker-hour",
            type=float,
            default=0.0,
            metavar="PRICE",
            help="Price of a Celery worker-hour, with --price-per-process-hour (0).",
        )
        parser.add_argument("--json", metavar="PATH", help="Write every figure to PATH.")

    def handle(self, *args, **opts) -> None:
        if opts["days"] < 1 or opts["weddings_per_year"] < 1 or opts["history_weeks"] < 1:
            raise CommandError("--days, --weddings-per-year and --history-weeks must be ≥ 1.")
        prices = (opts["price_per_process_hour"] or 0.0, opts["price_per_worker_hour"])
        if min(prices) < 0:
            raise CommandError("--price-per-process-hour and --price-per-worker-hour must be ≥ 0.")
        try:
            start = dt.date.fromisoformat(opts["start"])
        except ValueError as exc:
            raise CommandError(f"--start: {exc}") from exc
        began = time.perf_counter()
        history = synthetic_history(
            start,
            opts["days"],
            opts["seed"],
            opts["weddings_per_year"],
            model_profile=opts["model_profile"],
        )
        self._err(
            f"history: {history.weddings} weddings, {history.slots} slots "
            f"({time.perf_counter() - began:.1f} s)"
        )
        result = replay(
            history,
            history_days=7 * opts["history_weeks"],
            min_truth=opts["min_truth"],
            progress=self._progress,
            without_protocol=opts["without_protocol"],
            prices=prices if opts["price_per_process_hour"] is not None else None,
        )
        elapsed = time.perf_counter() - began
        result["parameters"] = {
            k: opts[k]
            for k in (
                "days",
                "seed",
                "start",
                "weddings_per_year",
                "history_weeks",
                "min_truth",
                "without_protocol",
                "model_profile",
                "price_per_process_hour",
                "price_per_worker_hour",
            )
        }
        result["elapsed_s"] = round(elapsed, 2)
        result["machine"] = {"python": platform.python_version(), "platform": platform.platform()}
        self._table(result)
        if opts["json"]:
            path = Path(opts["json"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))
            self._err(f"wrote {path}")

    def _err(self, line: str) -> None:
        self.stderr.write(f"scaling_backtest: {line}", style_func=str)

    def _progress(self, done: int, total: int) -> None:
        if done % 30 == 0 or done == total:
            self._err(f"day {done}/{total}")

    def _table(self, r: dict) -> None:
        def pct(value: float | None) -> str:
            return "–" if value is None else f"{value:.1f} %"

        out = self.stdout.write
        out(
            f"{r['days']} days from {r['start']}, {r['weddings']} weddings, scored from "
            f"{r['scored_from']}: {r['slots_scored']} slots over {r['min_truth']:g} "
            f"connections, peak {r['peak_connections']:,.0f}"
        )
        out("")
        out(f"{'forecast':<28}{'MAPE':>10}{'bias':>10}")
        for name, f in r["forecasts"].items():
            out(f"{name:<28}{pct(f['mape_pct']):>10}{pct(f['bias_pct']):>10}")
        out(f"model vs seasonal-naive: {pct(r['model_vs_naive_mape_reduction_pct'])} lower MAPE")
        out("")
        out(
            f"{'policy':<26}{'under-cap min':>14}{'over-limit min':>15}"
            f"{'process-h':>11}{'worker-h':>10}{'peak':>6}{'changes':>9}"
            + (f"{'cost':>12}" if "cost" in next(iter(r["policies"].values())) else "")
        )
        for name, p in r["policies"].items():
            out(
                f"{name:<26}{p['under_capacity_minutes']:>14,.0f}"
                f"{p['over_connection_limit_minutes']:>15,.0f}{p['process_hours']:>11,.0f}"
                f"{p['worker_hours']:>10,.0f}{p['peak_processes']:>6}{p['changes']:>9,}"
                + (f"{p['cost']:>12,.2f}" if "cost" in p else "")
            )
        in_window = pct(r["share_of_time_a_wedding_in_window_pct"])
        out(f"a wedding in its window (the Saturday protocol in force) {in_window} of the time")
        for e in r["event_days"]:
            m, u = e["mape_pct"], e["under_capacity_minutes"]
            out(
                f"{e['event']} {e['date']}: peak {e['peak_connections']:,.0f}, MAPE model "
                f"{pct(m['demand_model'])} / naive {pct(m['seasonal_naive'])}, under-capacity "
                + ", ".join(f"{k} {v:,.0f} min" for k, v in u.items())
            )
        out(f"({r['elapsed_s']:.1f} s)")
