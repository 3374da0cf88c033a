"""``python manage.py cachebench``: replay a synthetic Saturday through each cache set-up.

Data: ``weddings.demo.seed_demo`` writes N weddings x V vendors into the current database
inside a transaction that is rolled back at the end, so the database is left as it was
(it holds that transaction open for the whole run: use a development or scratch
database). The trace, from a seeded RNG, is a Saturday at 13:00 at the venues: each
operation picks a wedding with a Zipf-like skew toward ceremonies near that moment, then
one of its vendors, and either fetches the wedding's snapshot as ``GET /api/weddings/<id>/``
does (the snapshot, then the guest rows: two gets), checks the vendor user's access (every
subscribe does), reads the vendor's coordinator entry (which tells a planner from a
vendor for the guest view), or, for ``--write-ratio`` of the operations, invalidates the
snapshot as a stored event does. Supplier profiles are not read: nothing on the day
reads them (docs/scaling.md). (``seed_demo`` itself is not
seeded: venues and ceremony times, and so the skew, differ a little between runs.)

Each configuration (no cache, L1 only, L2 only, both tiers, both tiers after warming)
gets its own ``TwoTierCache`` in its own namespace and the same trace. Gets are timed one
by one and attributed to the tier that answered (from the per-tier hit counters), so the
latency columns are per tier; misses include the database load and the ``set``. Redis
bytes are the namespace's stored values at the end; the compression ratio comes from
the cache's own stats. See docs/benchmarks.md.
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from core.cache import L1Cache, L2Cache, TwoTierCache
from scaling.warming import warm_plan
from weddings.demo import DemoSeedError, seed_demo

# Zipf exponent of the wedding popularity by distance of the ceremony from "now": 1.1
# puts ~35 % of the traffic on the nearest of 25 weddings, ~80 % on the nearest eight.
ZIPF_S = 1.1
# The mix of a vendor's reads on the day: mostly the running order (with its guests),
# then the access check of each (re)subscribe, then the coordinator entry.
READ_MIX = (("snapshot", 0.6), ("access", 0.3), ("coordinator", 0.1))
# The keys one operation of each kind reads, in order.
KEYS_READ = {
    "snapshot": ("snapshot", "guests"),
    "access": ("access",),
    "coordinator": ("coordinator",),
}
CONFIGS = (
    ("no cache", False, False, False),
    ("L1 only", True, False, False),
    ("L2 only", False, True, False),
    ("both tiers", True, True, False),
    ("both tiers + warming", True, True, True),
)


class _Rollback(Exception):
    """Raised to roll the seeded data back once the benchmark is done."""


@dataclass
class _Result:
    name: str
    gets: int = 0
    writes: int = 0
    hits: dict[str, int] = field(default_factory=lambda: {"l1": 0, "l2": 0})
    misses: int = 0
    latency_ns: dict[str, list[int]] = field(
        default_factory=lambda: {"l1": [], "l2": [], "miss": []}
    )
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)  # key kind: gets, hits
    warm_s: float = 0.0
    run_s: float = 0.0
    redis_bytes: float = 0.0
    bytes_written: float = 0.0
    compression_ratio: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        def pct(values: list[int], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000, 2)

        tiers = {}
        for tier in ("l1", "l2", "miss"):
            values = self.latency_ns[tier]
            tiers[tier] = {
                "count": len(values),
                "p50_us": pct(values, 0.5),
                "p99_us": pct(values, 0.99),
                "mean_us": round(statistics.fmean(values) / 1000, 2) if values else None,
            }
        hits = self.hits["l1"] + self.hits["l2"]
        return {
            "name": self.name,
            "gets": self.gets,
            "writes": self.writes,
            "hit_ratio": {
                "l1": self.hits["l1"] / self.gets if self.gets else 0.0,
                "l2": self.hits["l2"] / self.gets if self.gets else 0.0,
                "combined": hits / self.gets if self.gets else 0.0,
            },
            "latency": tiers,
            "hit_ratio_by_key": {
                kind: counts["hits"] / counts["gets"] if counts["gets"] else 0.0
                for kind, counts in sorted(self.by_kind.items())
            },
            "redis_bytes": self.redis_bytes,
            "redis_bytes_written": self.bytes_written,
            "compression_ratio": self.compression_ratio,
            "warm_s": round(self.warm_s, 3),
            "run_s": round(self.run_s, 3),
        }


class Command(BaseCommand):
    help = "Benchmark the two-tier cache on a synthetic Saturday trace (table + JSON)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--weddings", type=int, default=25, metavar="N")
        parser.add_argument("--vendors", type=int, default=40, metavar="V", help="Per wedding.")
        parser.add_argument("--ops", type=int, default=20_000, metavar="OPS")
        parser.add_argument("--write-ratio", type=float, default=0.02, metavar="R")
        parser.add_argument("--seed", type=int, default=5, help="RNG seed of the trace.")
        parser.add_argument(
            "--no-cache-ops",
            type=int,
            default=500,
            metavar="OPS",
            help="The no-cache run replays only the first OPS operations: every one is a "
            "database load (~1-10 ms), its hit ratio is 0 by definition.",
        )
        parser.add_argument("--json", type=Path, default=None, metavar="PATH")

    def handle(self, *args, **options) -> None:
        if options["ops"] < 1 or options["no_cache_ops"] < 1:
            raise CommandError("--ops and --no-cache-ops must be positive.")
        if not 0 <= options["write_ratio"] < 1:
            raise CommandError("--write-ratio must be in [0, 1).")
        l2_url = settings.REDIS_URL
        if not l2_url:
            self.stderr.write("cachebench: no REDIS_URL: the L2 configurations are skipped.")
        results: list[dict[str, Any]] = []
        try:
            with transaction.atomic():
                self._log(f"seeding {options['weddings']} x {options['vendors']} (rolled back)")
                demo = seed_demo(
                    weddings=options["weddings"], vendors_per_wedding=options["vendors"]
                )
                trace, now = _trace(demo, options["ops"], options["write_ratio"], options["seed"])
                for name, l1, l2, warm in CONFIGS:
                    if l2 and not l2_url:
                        continue
                    ops = trace if l1 or l2 else trace[: options["no_cache_ops"]]
                    self._log(f"{name}: {len(ops)} operations")
                    result = _run(
                        name,
                        ops,
                        l1=l1,
                        l2_url=l2_url if l2 else "",
                        warm=warm,
                        now=now,
                        progress=self._log,
                    )
                    results.append(result.as_dict())
                raise _Rollback
        except _Rollback:
            pass
        except DemoSeedError as exc:
            raise CommandError(str(exc)) from None
        document = {
            "command": "python manage.py cachebench "
            f"--weddings {options['weddings']} --vendors {options['vendors']} "
            f"--ops {options['ops']} --write-ratio {options['write_ratio']} "
            f"--seed {options['seed']} --no-cache-ops {options['no_cache_ops']}",
            "redis": bool(l2_url),
            "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
            "l1_ttl_s": getattr(settings, "CACHE_L1_TTL", None),
            "configs": results,
        }
        self.stdout.write(_table(results))
        if options["json"]:
            options["json"].write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
            self._log(f"wrote {options['json']}")

    def _log(self, message: str) -> None:
        self.stderr.write(f"cachebench: {message}", style_func=str)


@dataclass(frozen=True)
class _Op:
    kind: str  # snapshot | access | coordinator | write
    wedding: int
    supplier: int
    user: int


def _trace(
    demo: dict[str, Any], ops: int, write_ratio: float, seed: int
) -> tuple[list[_Op], dt.datetime]:
    """The seeded operation list, and the moment of the day it simulates."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible trace, not security)
    weddings = demo["weddings"]
    first = weddings[0]
    zone = zoneinfo.ZoneInfo(first["time_zone"])
    now = dt.datetime.combine(dt.date.fromisoformat(first["date"]), dt.time(13, 0), tzinfo=zone)

    def ceremony(w: dict[str, Any]) -> dt.datetime:
        local = dt.datetime.combine(
            dt.date.fromisoformat(w["date"]), dt.time.fromisoformat(w["ceremony_time"])
        )
        return local.replace(tzinfo=zoneinfo.ZoneInfo(w["time_zone"]))

    by_nearness = sorted(weddings, key=lambda w: (abs(ceremony(w) - now), w["id"]))
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(by_nearness))]
    kinds = [k for k, _ in READ_MIX]
    kind_weights = [w for _, w in READ_MIX]
    trace = []
    for _ in range(ops):
        wedding = rng.choices(by_nearness, weights)[0]
        supplier = rng.choice(wedding["suppliers"])
        user = supplier["users"][0]["user_id"]
        kind = "write" if rng.random() < write_ratio else rng.choices(kinds, kind_weights)[0]
        trace.append(_Op(kind, wedding["id"], supplier["id"], user))
    return trace, now


def _loaders() -> dict[str, Callable[[int], Any]]:
    """The uncached reads behind each key kind (the ones the cached loaders wrap)."""
    from realtime.snapshots import snapshot_load
    from weddings.caching import user_access_load, user_coordinator_of_load
    from weddings.selectors import guests_load

    return {
        "snapshot": snapshot_load,
        "guests": guests_load,
        "access": user_access_load,
        "coordinator": user_coordinator_of_load,
    }


def _run(
    name: str,
    trace: list[_Op],
    *,
    l1: bool,
    l2_url: str,
    warm: bool,
    now: dt.datetime,
    progress: Callable[[str], None],
) -> _Result:
    """Replay ``trace`` through one configuration and measure it."""
    loaders = _loaders()
    result = _Result(name)
    namespace = f"cachebench-{name.replace(' ', '').replace('+', '-')}"
    cache = _cache(l1, l2_url, namespace)
    if warm and cache is not None:
        _warm(cache, loaders, now, result, progress)
    _replay(trace, cache, loaders, result, progress)
    if cache is not None and l2_url:
        stats = cache.stats()["l2"]
        result.redis_bytes = _namespace_bytes(l2_url, namespace)
        result.bytes_written = float(stats["bytes"])
        result.compression_ratio = float(stats["compression_ratio"])
    if cache is not None:
        _clear_namespace(cache, l2_url, namespace)
    return result


def _cache(l1: bool, l2_url: str, namespace: str) -> TwoTierCache | None:
    """The configuration's cache, empty (None: no cache, every read loads)."""
    if not (l1 or l2_url):
        return None
    cache = TwoTierCache(
        l1=L1Cache(
            max_entries=settings.CACHE_L1_MAX_ENTRIES,
            max_bytes=settings.CACHE_L1_MAX_BYTES,
            ttl=settings.CACHE_L1_TTL,
        )
        if l1
        else None,
        l2=L2Cache(url=l2_url, ttl=settings.CACHE_L2_TTL) if l2_url else None,
        namespace=namespace,
    )
    _clear_namespace(cache, l2_url, namespace)
    return cache


def _warm(
    cache: TwoTierCache,
    loaders: dict[str, Callable[[int], Any]],
    now: dt.datetime,
    result: _Result,
    progress: Callable[[str], None],
) -> None:
    """Load what ``scaling.warming`` would before the replay (timed into ``warm_s``)."""
    started = time.perf_counter()
    plan = warm_plan(now=now, horizon_hours=settings.CACHE_WARM_HORIZON_HOURS)
    for kind, ids in (
        ("snapshot", plan.weddings),
        ("guests", plan.weddings),
        ("access", plan.users),
        ("coordinator", plan.vendors),
    ):
        for pk in ids:
            cache.get_or_load(f"{kind}:{pk}", lambda k=kind, p=pk: loaders[k](p))
    result.warm_s = time.perf_counter() - started
    progress(f"{result.name}: warmed {len(plan.keys())} keys in {result.warm_s:.2f} s")


def _replay(
    trace: list[_Op],
    cache: TwoTierCache | None,
    loaders: dict[str, Callable[[int], Any]],
    result: _Result,
    progress: Callable[[str], None],
) -> None:
    """Every operation of ``trace`` in order, counted and timed into ``result``."""
    name = result.name
    tick = max(1, len(trace) // 4)
    started = time.perf_counter()
    for index, op in enumerate(trace, 1):
        if op.kind == "write":
            result.writes += 1
            if cache is not None:
                cache.delete(f"snapshot:{op.wedding}")
            continue
        for kind in KEYS_READ[op.kind]:
            pk = op.wedding if kind in ("snapshot", "guests") else op.user
            counts = result.by_kind.setdefault(kind, {"gets": 0, "hits": 0})
            result.gets += 1
            counts["gets"] += 1
            if cache is None:
                t0 = time.perf_counter_ns()
                loaders[kind](pk)
                result.latency_ns["miss"].append(time.perf_counter_ns() - t0)
                result.misses += 1
                continue
            tier = _timed_get(cache, f"{kind}:{pk}", lambda k=kind, p=pk: loaders[k](p), result)
            if tier == "miss":
                result.misses += 1
            else:
                result.hits[tier] += 1
                counts["hits"] += 1
        if index % tick == 0:
            progress(f"{name}: {index}/{len(trace)}")
    result.run_s = time.perf_counter() - started


_MISSING = object()


def _timed_get(cache: TwoTierCache, key: str, loader: Callable[[], Any], result: _Result) -> str:
    """One timed get; returns the tier that answered ("l1", "l2") or "miss" (then loads)."""
    before = _hit_counts(cache)
    t0 = time.perf_counter_ns()
    value = cache.get(key, _MISSING)
    elapsed = time.perf_counter_ns() - t0
    if value is _MISSING:
        t0 = time.perf_counter_ns()
        cache.set(key, loader())
        result.latency_ns["miss"].append(elapsed + time.perf_counter_ns() - t0)
        return "miss"
    after = _hit_counts(cache)
    tier = "l1" if after[0] > before[0] else "l2"
    result.latency_ns[tier].append(elapsed)
    return tier


def _hit_counts(cache: TwoTierCache) -> tuple[int, int]:
    # The tiers' own counters: plain attributes, cheap enough to read around every get.
    return (cache.l1.hits if cache.l1 else 0), (cache.l2.hits if cache.l2 else 0)


def _clear_namespace(cache: TwoTierCache, l2_url: str, namespace: str) -> None:
    """Delete this namespace's keys from Redis, so each configuration starts cold."""
    if not l2_url:
        return
    client = redis.Redis.from_url(l2_url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _namespace_bytes(l2_url: str, namespace: str) -> float:
    """The bytes of the values stored under this namespace now (compressed, as stored)."""
    client = redis.Redis.from_url(l2_url)
    try:
        keys = [
            key
            for key in client.scan_iter(match=f"{namespace}:*", count=1000)
            if not key.endswith((b":lock", b":gen"))  # the cache's bookkeeping, not values
        ]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.strlen(key)
            return float(sum(pipe.execute())) if keys else 0.0
    finally:
        client.close()


def _table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'configuration':<22} {'hit L1':>7} {'hit L2':>7} {'combined':>8} "
        f"{'L1 p50/p99 us':>15} {'L2 p50/p99 us':>15} {'miss p50/p99 us':>17} "
        f"{'Redis bytes':>11} {'compr.':>6}"
    )
    lines = [head, "-" * len(head)]

    def pair(tier: dict[str, Any]) -> str:
        if tier["p50_us"] is None:
            return "-"
        return f"{tier['p50_us']:.1f}/{tier['p99_us']:.1f}"

    for r in results:
        ratio = r["hit_ratio"]
        lines.append(
            f"{r['name']:<22} {ratio['l1']:>7.1%} {ratio['l2']:>7.1%} {ratio['combined']:>8.1%} "
            f"{pair(r['latency']['l1']):>15} {pair(r['latency']['l2']):>15} "
            f"{pair(r['latency']['miss']):>17} {int(r['redis_bytes']):>11} "
            f"{r['compression_ratio']:>6.2f}"
        )
    return "\n".join(lines)
