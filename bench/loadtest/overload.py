"""overload: one server process offered 1.5x what it can take, in three priority classes.

First the process's capacity is measured: publishes of the mix below, closed-loop from
``CALIBRATION_CONCURRENCY`` publishes in flight, for ``--calibrate`` seconds (ok replies a
second). Then, open-loop at ``--factor`` x that rate for ``--duration`` seconds, a mix of
``MIX``: emergencies (``emergency.raised``, then its ``emergency.resolved``, by the members),
timeline changes (``timeline.item.created``, by each wedding's planner) and ordinary
messages. A third of the members only raise emergencies, each resolved by the raiser's
next one (the open emergencies per user stay within their limit), the others only send
messages. The default limits hold: the critical budget (1/s per user) asks for enough
raisers (the defaults, 20 weddings of 12 vendors, have 80: 64 emergencies/s), and a
planner's timeline changes wait for each other (one frame of a user at a time). Each
class reports its publish reply latency and its delivery latency: from the send time the
publish carries (``accounting.publish_text``) to its arrival at an observer subscribed
to the wedding (one per wedding, the project's client). Receivers of the usual kind
(``WorkerGroup``) load the fan-out meanwhile. Run it twice in one sitting, the second
with ``--server-env REALTIME_PRIORITY=false``: the same overload without priority
(docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wedsync_client.client import ClientError, RealtimeClient

from .accounting import Latencies, payload_sent_at_ns, publish_text
from .merging import merge_open
from .phases import _Receivers, receivers_plan
from .scenarios import Overload
from .seeding import WeddingLogins

if TYPE_CHECKING:
    from .runner import Run

CLASSES = ("emergency", "timeline", "ordinary")
# Of every 20 publishes: 2 emergencies, 2 timeline changes, 16 ordinary messages, spread
# out so that no class comes in bursts of its own.
MIX = ("ordinary", "timeline", "ordinary", "ordinary", "ordinary", "emergency", "ordinary",
       "ordinary", "ordinary", "ordinary", "ordinary", "timeline", "ordinary", "ordinary",
       "ordinary", "emergency", "ordinary", "ordinary", "ordinary", "ordinary")  # fmt: skip
# One member in RAISER_EVERY of each wedding raises (and resolves) the emergencies and
# sends nothing else, as a phone on the day would: a connection handles its frames in
# order, so an emergency sent behind a queue of the same phone's messages waits for them
# whatever the server's priority (docs/adr/0031-priority-under-overload.md).
RAISER_EVERY = 3
# Publishes in flight while the capacity is measured: enough to keep every database
# thread of the process busy (REALTIME_DB_THREADS 6) with a queue behind them.
CALIBRATION_CONCURRENCY = 24
# Publishes awaiting their reply per connection; past this a tick is skipped (counted).
MAX_IN_FLIGHT = 64


def class_of(event: str) -> str:
    """The priority class a delivered event counts in."""
    if event.startswith("emergency."):
        return "emergency"
    if event.startswith("timeline."):
        return "timeline"
    return "ordinary"


@dataclass
class ClassStats:
    """What one priority class's publishes did."""

    sent: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    reply_ms: Latencies = field(default_factory=Latencies)
    delivery_ms: Latencies = field(default_factory=Latencies)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "errors": dict(self.errors),
            "reply_latency": self.reply_ms.summary(),
            "delivery_latency": self.delivery_ms.summary(),
        }


class _Conn:
    def __init__(self, client: RealtimeClient, topic: str, name: str) -> None:
        self.client, self.topic, self.name = client, topic, name
        self.in_flight = 0
        # This connection's emergency: being raised, or open (its id) and resolved next.
        self.raising = False
        self.open_emergency: str | None = None


class OverloadTraffic:
    """Publishers of the three classes and one observer per wedding."""

    def __init__(self, url: str, world: list[WeddingLogins]) -> None:
        self.url, self.world = url, world
        self.planners: list[_Conn] = []
        self.members: list[_Conn] = []  # ordinary messages
        self.raisers: list[_Conn] = []  # emergencies
        self.observers: list[RealtimeClient] = []
        self.stats = {name: ClassStats() for name in CLASSES}
        self.measuring_from_ns: int | None = None  # publishes sent since are measured
        self.skipped = 0
        self._count = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()

    async def connect(self) -> None:
        """The planner (timeline) and the members (emergencies, messages) of each wedding,
        and an observer on the last member's token."""
        pending = []
        for w, wedding in enumerate(self.world):
            tokens = wedding.tokens
            pending.append((self.planners, tokens[0], wedding.topic, f"w{w}planner"))
            for m, token in enumerate(tokens[1:-1]):
                into = self.raisers if m % RAISER_EVERY == 0 else self.members
                pending.append((into, token, wedding.topic, f"w{w}m{m}"))

        async def open_one(into: list[_Conn], token: str, topic: str, name: str) -> None:
            client = RealtimeClient(self.url, token=token, request_timeout=60.0)
            await client.connect()
            into.append(_Conn(client, topic, name))

        for i in range(0, len(pending), 100):
            await asyncio.gather(*(open_one(*args) for args in pending[i : i + 100]))
        for wedding in self.world:
            observer = RealtimeClient(self.url, token=wedding.tokens[-1], on_event=self._on_event)
            await observer.connect()
            await observer.subscribe(wedding.topic)
            self.observers.append(observer)

    def _on_event(self, frame: dict) -> None:
        sent_ns = payload_sent_at_ns(frame.get("payload"))
        start = self.measuring_from_ns
        if sent_ns is not None and start is not None and sent_ns >= start:
            delay_ms = (time.time_ns() - sent_ns) / 1e6
            self.stats[class_of(str(frame.get("event")))].delivery_ms.add(delay_ms)

    async def calibrate(self, seconds: float) -> float:
        """The ok publishes of the mix a second the server sustains, closed-loop.

        The mix's own (``MIX``, each class from its publishers), not ``message.posted``
        alone: an emergency or a timeline change costs the server several times an
        ordinary message (a transaction of several statements under the topic's lock,
        where a message is one statement), so
        "1.5x capacity" measured in messages asked more than the process's whole capacity
        of the critical classes alone, and no order of work could have kept them on time.
        What the calibration sends is left out of the report (``reset_stats``)."""
        done = 0
        deadline = time.monotonic() + seconds
        mix, picks = itertools.cycle(MIX), self._picker()

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                kind = next(mix)
                conn = picks(kind)
                if conn is None:
                    await asyncio.sleep(0.01)
                    continue
                if await self._publish(conn, kind):
                    done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CALIBRATION_CONCURRENCY)))
        elapsed = time.monotonic() - started
        self.reset_stats()
        return done / max(1e-9, elapsed)

    def reset_stats(self) -> None:
        """Forget what was sent so far (the calibration's publishes)."""
        self.stats = {name: ClassStats() for name in CLASSES}

    def _picker(self) -> Callable[[str], _Conn | None]:
        """Chooses the connection for a publish of a class: the wedding planners for the
        timeline, a raiser whose raise is not in flight for an emergency (None: all are),
        the members for messages."""
        planners, members = itertools.cycle(self.planners), itertools.cycle(self.members)
        raisers = itertools.cycle(self.raisers)

        def pick(kind: str) -> _Conn | None:
            if kind == "emergency":
                for _ in range(len(self.raisers)):
                    conn = next(raisers)
                    if not conn.raising:
                        return conn
                return None
            return next(planners) if kind == "timeline" else next(members)

        return pick

    async def run(self, rate: float, duration: float) -> dict[str, Any]:
        """Publish the mix at ``rate`` per second for ``duration`` seconds, open-loop."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        total = max(1, round(rate * duration))
        mix, picks = itertools.cycle(MIX), self._picker()
        self.measuring_from_ns = time.time_ns()
        started = loop.time()
        max_lag_ms = 0.0
        for n in range(total):
            due = started + n * interval
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                max_lag_ms = max(max_lag_ms, (now - due) * 1000)
            kind = next(mix)
            conn = picks(kind)
            if conn is None or conn.in_flight >= MAX_IN_FLIGHT:
                self.skipped += 1
                continue
            task = loop.create_task(self._publish(conn, kind))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        seconds = max(loop.time() - started, total * interval)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=120)
        return {"seconds": round(seconds, 3), "max_schedule_lag_ms": round(max_lag_ms, 1)}

    def _publish_args(self, conn: _Conn, kind: str) -> tuple[str, dict[str, Any]]:
        stamp = publish_text(time.time_ns(), f"{conn.name}-{next(self._count)}")
        if kind == "timeline":
            return "timeline.item.created", {
                "title": "load", "starts_at": "2026-06-13T15:00:00+00:00", "location": stamp
            }  # fmt: skip
        if kind == "emergency":
            if conn.open_emergency is not None:  # its own emergency: resolved next
                emergency_id, conn.open_emergency = conn.open_emergency, None
                return "emergency.resolved", {"id": emergency_id, "text": stamp}
            conn.raising = True
            emergency_id = f"lt{next(self._count)}-{time.time_ns()}"
            return "emergency.raised", {"kind": "load", "text": stamp, "id": emergency_id}
        return "message.posted", {"text": stamp}

    async def _publish(self, conn: _Conn, kind: str) -> bool:
        """Publish one of ``kind`` on ``conn``, counted in its class; whether it was ok."""
        stats = self.stats[kind]
        conn.in_flight += 1
        stats.sent += 1
        started = time.perf_counter()
        event, payload = self._publish_args(conn, kind)
        try:
            await conn.client.publish(conn.topic, event, payload)
        except ClientError as exc:
            stats.errors[exc.code] += 1
            return False
        else:
            stats.ok += 1
            stats.reply_ms.add((time.perf_counter() - started) * 1000)
            if event == "emergency.raised":  # resolved by this connection's next emergency
                conn.open_emergency = payload["id"]
            return True
        finally:
            conn.in_flight -= 1
            if event == "emergency.raised":
                conn.raising = False

    async def settle(self, timeout: float) -> None:
        """Wait until the observers have seen every ok publish (or ``timeout``)."""
        want = sum(s.ok for s in self.stats.values())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(len(s.delivery_ms) for s in self.stats.values()) >= want:
                return
            await asyncio.sleep(0.1)

    async def resolve_open(self) -> None:
        """Resolve the emergencies left open (not measured): the raisers' limit is theirs."""
        open_ = [c for c in self.raisers if c.open_emergency is not None]
        for conn in open_:
            emergency_id, conn.open_emergency = conn.open_emergency, None
            with contextlib.suppress(ClientError):
                await conn.client.publish(conn.topic, "emergency.resolved", {"id": emergency_id})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        clients = [c.client for c in self.planners + self.members + self.raisers]
        clients += self.observers
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def overload(scenario: Overload, world: list[WeddingLogins], run: Run) -> dict:
    """Calibrate, then offer ``factor`` x the capacity in the three classes."""
    plan = receivers_plan(world, scenario.weddings * scenario.receivers, scenario.receivers)
    traffic = OverloadTraffic(run.target.ws_url, world)
    async with _Receivers(run, world, plan, scenario.processes) as rx:
        rx.run.status = lambda: (
            f"publishes ok {sum(s.ok for s in traffic.stats.values())} | delivered "
            f"{sum(len(s.delivery_ms) for s in traffic.stats.values())}"
        )
        try:
            opened = merge_open(await rx.group.open()) if plan else {}
            await traffic.connect()
            run.say(f"measuring capacity for {scenario.calibrate:g} s")
            capacity = await traffic.calibrate(scenario.calibrate)
            # A comparison run offers the first run's rate (--rate): on a shared machine the
            # measured capacity moves from one run to the next.
            rate = scenario.rate or max(1.0, capacity * scenario.factor)
            run.say(
                f"capacity {capacity:.1f} publishes/s; offering {rate:.1f}/s "
                f"({rate / capacity:.2f}x) for {scenario.duration:g} s"
            )
            start = run.mark()
            schedule = await traffic.run(rate, scenario.duration)
            publish_end = time.monotonic()
            await traffic.settle(scenario.drain_timeout)
            await traffic.resolve_open()
            usage = run.usage(start, publish_end)
        finally:
            await traffic.close()
    return {
        "connections": {
            **opened,
            "publishers": len(traffic.planners) + len(traffic.members) + len(traffic.raisers),
            "observers": len(traffic.observers),
        },
        "capacity_per_s": round(capacity, 2),
        "offered_per_s": round(rate, 2),
        "schedule": {**schedule, "skipped": traffic.skipped},
        "classes": {name: stats.as_dict() for name, stats in traffic.stats.items()},
        "server_usage": usage,
        "receivers": rx.counters,
    }
