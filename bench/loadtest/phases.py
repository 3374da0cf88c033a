"""The scenarios' phases: one coroutine per scenario, each driving the server under test
from the coordinator's event loop and returning its part of the report (a dict).

Receivers live in worker processes (``WorkerGroup``), publishers and HTTP clients here;
the topics' final seqs come from the event log through a thread. Every phase is bounded
in time. ``runner`` picks the phase of a scenario and passes it the ``Run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from .accounting import DeliveryTotals, Latencies
from .httpclient import HttpError, KeepAliveClient
from .merging import deliveries, merge_counters, merge_open, merge_totals
from .publishers import Publishers, PublishStats
from .scenarios import ConnectionsMax, FanoutMax, ReconnectStorm, SaturdayPeak, SnapshotRead
from .seeding import WeddingLogins, final_seqs
from .worker import WorkerGroup

if TYPE_CHECKING:
    from .runner import Run


def receivers_plan(
    world: list[WeddingLogins], connections: int, per_wedding: int
) -> list[tuple[str, tuple[str, ...]]]:
    """(token, topics) per receiver: ``per_wedding`` users of each wedding, in wedding
    order, ``connections`` in all."""
    plan = [(token, (w.topic,)) for w in world for token in w.tokens[:per_wedding]]
    return plan[:connections]


async def _seqs(topics: list[str]) -> dict[str, int]:
    return await asyncio.to_thread(final_seqs, topics)


class _Receivers:
    """Workers, publishers and the run, set up and torn down together."""

    def __init__(self, run: Run, world: list[WeddingLogins], plan: list, processes: int,
                 *, subscribe: bool = True, concurrency: int = 200) -> None:  # fmt: skip
        self.run = run
        self.world = world
        self.topics = sorted({w.topic for w in world})
        self.group = WorkerGroup(
            run.target.ws_url, plan, processes, subscribe=subscribe, concurrency=concurrency,
            source_addresses=run.target.source_addresses,
        )  # fmt: skip
        self.publishers = Publishers(run.target.ws_url, [(w.topic, w.tokens) for w in world])
        self.counters: dict[str, Any] = {}

    async def __aenter__(self) -> _Receivers:
        await self.group.start()
        self.run.status = self.status
        self.run.start_background()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.publishers.close()
        self.counters = merge_counters(await self.group.close())
        await self.run.stop_background()

    def status(self) -> str:
        p = self.group.summed_progress()
        return (
            f"connections {p.get('live', 0)} | published {self.publishers.ok_total} | "
            f"delivered {p.get('received', 0)} dup {p.get('duplicates', 0)} | "
            f"reconnects {p.get('reconnects', 0)}"
        )

    async def publish(self, rate: float, duration: float) -> PublishStats:
        return await self.publishers.run(rate, duration)


async def saturday_peak(scenario: SaturdayPeak, world: list[WeddingLogins], run: Run) -> dict:
    """Receivers subscribed, then ``rate`` publishes/s for ``duration`` seconds."""
    plan = receivers_plan(world, scenario.connections, scenario.per_wedding)
    async with _Receivers(run, world, plan, scenario.processes) as rx:
        run.say(f"opening {len(plan)} receiver connections in {rx.group.size} process(es)")
        opened = merge_open(await rx.group.open())
        await rx.publishers.ensure(scenario.rate)
        run.say(
            f"{opened['succeeded']}/{opened['attempted']} receivers subscribed, "
            f"{rx.publishers.connections} publisher connections; publishing "
            f"{scenario.rate:g}/s for {scenario.duration:g} s"
        )
        await rx.group.call("window", None)
        start = run.mark()
        published = await rx.publish(scenario.rate, scenario.duration)
        publish_end = time.monotonic()
        finals = await _seqs(rx.topics)
        totals, drain_s = merge_totals(
            await rx.group.call("finish", finals, scenario.drain_timeout)
        )
        end = run.mark()
        usage = run.usage(start, publish_end)
        publisher_connections = rx.publishers.connections
    return {
        "connections": {**opened, "publishers": publisher_connections},
        "publishes": published.as_dict(),
        "deliveries": deliveries(totals, (publish_end - start) + drain_s),
        "drain_s": round(drain_s, 3),
        "measured_s": round(end - start, 3),
        "server_usage": usage,
        "receivers": rx.counters,
    }


async def fanout_max(scenario: FanoutMax, world: list[WeddingLogins], run: Run) -> dict:
    """Step the publish rate up until a step has loss, disorder or p99 over the limit."""
    plan = receivers_plan(world, scenario.weddings * scenario.per_wedding, scenario.per_wedding)
    steps: list[dict[str, Any]] = []
    async with _Receivers(run, world, plan, scenario.processes) as rx:
        run.say(f"opening {len(plan)} receiver connections in {rx.group.size} process(es)")
        opened = merge_open(await rx.group.open())
        run.say(f"{opened['succeeded']}/{opened['attempted']} receivers subscribed")
        starts = await _seqs(rx.topics)
        for number, rate in enumerate(scenario.rates(), 1):
            await rx.publishers.ensure(rate)
            run.say(
                f"step {number}: {rate:g} publishes/s "
                f"(~{rate * scenario.per_wedding:,.0f} deliveries/s) for "
                f"{scenario.step_duration:g} s on {rx.publishers.connections} publishers"
            )
            await rx.group.call("window", starts)
            start = run.mark()
            published = await rx.publish(rate, scenario.step_duration)
            publish_end = time.monotonic()
            finals = await _seqs(rx.topics)
            totals, drain_s = merge_totals(
                await rx.group.call("finish", finals, scenario.drain_timeout)
            )
            run.mark()
            step = _step_row(number, rate, scenario, published, totals, drain_s,
                             publish_end - start, run.usage(start, publish_end))  # fmt: skip
            steps.append(step)
            run.say(
                f"step {number}: {step['deliveries_per_s']:,} deliveries/s, "
                f"p99 {step['p99_ms']} ms, missing {step['missing']}: "
                f"{'pass' if step['passed'] else 'FAIL (' + step['reason'] + ')'}"
            )
            if not step["passed"]:
                break
            starts = finals
        publisher_connections = rx.publishers.connections
    passing = [s for s in steps if s["passed"]]
    best = max(passing, key=lambda s: s["deliveries_per_s"] or 0) if passing else None
    return {
        "connections": {**opened, "publishers": publisher_connections},
        "steps": steps,
        "best": best,
        "max_deliveries_per_s": best["deliveries_per_s"] if best else None,
        "receivers": rx.counters,
    }


def _step_row(number: int, rate: float, scenario: FanoutMax, published: PublishStats,
              totals: DeliveryTotals, drain_s: float, seconds: float,
              usage: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    latency = totals.latencies.summary()
    reasons = []
    if totals.missing:
        reasons.append(f"{totals.missing} lost")
    if totals.duplicates:
        reasons.append(f"{totals.duplicates} duplicated")
    if totals.out_of_order:
        reasons.append(f"{totals.out_of_order} out of order")
    if latency["p99_ms"] is None or latency["p99_ms"] > scenario.p99_limit_ms:
        reasons.append(f"p99 over {scenario.p99_limit_ms:g} ms")
    if published.errors or published.skipped:
        reasons.append("publishes refused or skipped")
    achieved = published.sent / published.seconds if published.seconds else 0.0
    if achieved < 0.95 * rate:
        reasons.append(f"the generator sent only {achieved:.0f} publishes/s")
    return {
        "step": number,
        "rate": rate,
        "publishes_ok": published.ok,
        "publish_rate_sent": round(achieved, 1),
        "publish_errors": dict(published.errors),
        "expected": totals.expected,
        "received": totals.received,
        "missing": totals.missing,
        "duplicates": totals.duplicates,
        "out_of_order": totals.out_of_order,
        "deliveries_per_s": round(totals.received / (seconds + drain_s), 1),
        "drain_s": round(drain_s, 3),
        **latency,
        "server_usage": usage,
        "passed": not reasons,
        "reason": "; ".join(reasons),
    }


async def connections_max(scenario: ConnectionsMax, world: list[WeddingLogins], run: Run) -> dict:
    """Open idle connections level by level; server RSS and memory per connection."""
    plan = receivers_plan(world, scenario.levels[-1], scenario.per_wedding)
    rows: list[dict[str, Any]] = []
    await asyncio.sleep(scenario.settle)  # the server's own start-up settles first
    baseline = run.rss_mib()
    async with _Receivers(run, world, plan, scenario.processes, subscribe=scenario.subscribe,
                          concurrency=scenario.concurrency) as rx:  # fmt: skip
        previous = 0
        succeeded = 0
        for level in scenario.levels:
            run.say(f"opening connections {previous + 1}-{level}")
            start = run.mark()
            opened = merge_open(await rx.group.open(level - previous))
            connect_end = run.mark()
            succeeded += opened["succeeded"]
            await asyncio.sleep(scenario.settle)
            rss = run.rss_mib()
            per_conn_kib = (
                round((rss - baseline) * 1024 / succeeded, 1)
                if rss is not None and baseline is not None and succeeded
                else None
            )
            rows.append(
                {
                    "level": level,
                    "open": succeeded,
                    "attempted": opened["attempted"],
                    "succeeded": opened["succeeded"],
                    "failures": opened["failures"],
                    "connect_rate_per_s": opened["rate_per_s"],
                    "connect_p50_ms": opened["connect_p50_ms"],
                    "connect_p99_ms": opened["connect_p99_ms"],
                    "rss_mib": rss,
                    "per_connection_kib": per_conn_kib,
                    "server_cpu_connecting": run.usage(start, connect_end)["cpu_percent"],
                }
            )
            run.say(
                f"{succeeded} open: server RSS {rss} MiB "
                f"({per_conn_kib} KiB per connection), {opened['rate_per_s']} connects/s"
            )
            previous = level
        held = await _hold(scenario.hold, run, rx) if scenario.hold else []
    attempted = sum(r["attempted"] for r in rows)
    return {
        "connections": {"attempted": attempted, "succeeded": succeeded},
        "baseline_rss_mib": baseline,
        "levels": rows,
        "hold": held,
        "receivers": rx.counters,
    }


HOLD_SAMPLE_S = 30.0


async def _hold(seconds: float, run: Run, rx: Any) -> list[dict[str, Any]]:
    """Hold the connections open (the receivers' pings and the server's keepalive go on)
    for ``seconds``; the server's RSS at the start and every HOLD_SAMPLE_S."""
    start = time.monotonic()
    samples: list[dict[str, Any]] = []
    while True:
        elapsed = time.monotonic() - start
        samples.append({"at_s": round(elapsed), "rss_mib": run.rss_mib()})
        run.say(f"holding: {samples[-1]['at_s']} s, server RSS {samples[-1]['rss_mib']} MiB")
        if elapsed >= seconds:
            return samples
        await asyncio.sleep(min(HOLD_SAMPLE_S, seconds - elapsed))


async def reconnect_storm(scenario: ReconnectStorm, world: list[WeddingLogins], run: Run) -> dict:
    """Publish throughout; drop every receiver at once after ``before`` seconds; each
    reconnects with since. Measured: until every one has every event it missed."""
    plan = receivers_plan(world, scenario.connections, scenario.per_wedding)
    async with _Receivers(run, world, plan, scenario.processes) as rx:
        run.say(f"opening {len(plan)} receiver connections in {rx.group.size} process(es)")
        opened = merge_open(await rx.group.open())
        await rx.publishers.ensure(scenario.rate)
        await rx.group.call("window", None)
        run.say(
            f"{opened['succeeded']}/{opened['attempted']} receivers subscribed; publishing "
            f"{scenario.rate:g}/s, the drop comes after {scenario.before:g} s"
        )
        start = run.mark()
        publishing = asyncio.ensure_future(
            rx.publish(scenario.rate, scenario.before + scenario.after)
        )
        await asyncio.sleep(scenario.before)
        run.say(f"dropping all {opened['succeeded']} connections")
        storm_start = run.mark()
        storms = await rx.group.call("storm", scenario.recovery_timeout)
        storm_end = run.mark()
        published = await publishing
        publish_end = time.monotonic()
        finals = await _seqs(rx.topics)
        totals, drain_s = merge_totals(
            await rx.group.call("finish", finals, scenario.drain_timeout)
        )
        end = run.mark()
        publisher_connections = rx.publishers.connections
    dropped = sum(s["dropped"] for s in storms)
    recovered = Latencies()
    reconnected = Latencies()
    for s in storms:
        for value in s["recovered_s"]:
            recovered.add(value * 1000)
        for value in s["reconnected_s"]:
            reconnected.add(value * 1000)
    all_back = len(recovered) == dropped
    return {
        "connections": {**opened, "publishers": publisher_connections},
        "publishes": published.as_dict(),
        "storm": {
            "dropped": dropped,
            "recovered": len(recovered),
            "all_recovered_s": round(max(recovered.samples) / 1000, 3)
            if all_back and dropped
            else None,
            "recovered_ms": recovered.summary(),
            "reconnected_ms": reconnected.summary(),
            "server_usage": run.usage(storm_start, storm_end),
        },
        "deliveries": deliveries(totals, (publish_end - start) + drain_s),
        "drain_s": round(drain_s, 3),
        "measured_s": round(end - start, 3),
        "server_usage": run.usage(start, publish_end),
        "receivers": rx.counters,
    }


async def snapshot_read(scenario: SnapshotRead, world: list[WeddingLogins], run: Run) -> dict:
    """GET /api/weddings/<id>/ at a fixed rate over ``clients`` keep-alive connections.

    Latency runs from each request's scheduled time, so time spent waiting for a free
    client counts (no coordinated omission).
    """
    clients: list[tuple[KeepAliveClient, int]] = []
    for k in range(scenario.clients):
        wedding = world[k % len(world)]
        token = wedding.tokens[(k // len(world)) % len(wedding.tokens)]
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        clients.append((KeepAliveClient(run.target.host, run.target.port, headers), wedding.id))
    idle: asyncio.Queue = asyncio.Queue()
    for client in clients:
        idle.put_nowait(client)
    latency = Latencies()
    statuses: Counter = Counter()
    body_bytes = 0
    sent = 0
    tasks: set[asyncio.Task] = set()
    run.status = lambda: f"requests {sent} | ok {statuses.get(200, 0)}"
    run.start_background()

    async def one(due: float) -> None:
        nonlocal body_bytes
        client, wedding_id = await idle.get()
        try:
            status, body = await client.get(f"/api/weddings/{wedding_id}/")
        except (HttpError, OSError) as exc:
            statuses[type(exc).__name__] += 1
        else:
            statuses[status] += 1
            body_bytes += len(body)
            if status == 200:
                latency.add((time.monotonic() - due) * 1000)
        finally:
            idle.put_nowait((client, wedding_id))

    try:
        # One warm-up read per client: the figures are of a warm cache, as on the day
        # (scaling.warming keeps the snapshots of near weddings loaded; a reader's user
        # and access are cached once it connected or read before).
        for client, wedding_id in clients:
            with contextlib.suppress(HttpError, OSError):
                await client.get(f"/api/weddings/{wedding_id}/")
        total = max(1, round(scenario.rate * scenario.duration))
        start = run.mark()
        loop_start = time.monotonic()
        for n in range(total):
            due = loop_start + n / scenario.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.wait(list(tasks), timeout=60)
        end = run.mark()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(c.close() for c, _ in clients), return_exceptions=True)
        await run.stop_background()
    ok = statuses.get(200, 0)
    return {
        "connections": {"attempted": scenario.clients, "succeeded": scenario.clients},
        "requests": {
            "sent": sent,
            "statuses": {str(k): v for k, v in statuses.items()},
            "ok": ok,
            "per_s": round(ok / (end - start), 1) if end > start else None,
            "mean_body_bytes": round(body_bytes / max(1, sum(statuses.values()))),
            "latency": latency.summary(),
            "cache_hit_ratio": None,
            "cache_hit_ratio_note": "not measured: the benchmark does not scrape the "
            "server's /metrics (its cache counters, docs/monitoring.md)",
        },
        "measured_s": round(end - start, 3),
        "server_usage": run.usage(start, end),
    }
