"""The soak's run: saturday-peak's load for ``duration`` seconds, the faults on their
schedule, the alert evaluations on theirs, RSS samples and progress lines throughout;
then the drain, the final seqs and the proofs (``proofs``).

Runs on the coordinator's event loop like loadtest's phases, with the same parts:
receivers in ``WorkerGroup`` processes (each reconnects with ``since`` when its
connection drops), ``Publishers`` on the project's client (which retry with the same
idempotency key), the topics' final seqs from the event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.loadtest.merging import deliveries, merge_counters, merge_open, merge_totals
from bench.loadtest.phases import receivers_plan
from bench.loadtest.publishers import Publishers
from bench.loadtest.seeding import WeddingLogins, final_seqs
from bench.loadtest.worker import WorkerGroup

from . import faults as faulting
from .memory import RssTracker
from .world import World

Say = Callable[[str], None]
# One evaluation (a snapshot and the rules) takes well under a second; one that takes
# this long is reported as failed, and the soak goes on without the evaluator.
EVALUATION_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SoakOptions:
    """The soak's parameters (the command's options; docs/benchmarks.md)."""

    duration: float = 1800.0
    connections: int = 1000
    weddings: int = 25
    rate: float = 50.0
    processes: int = 2
    workers: int = 2
    faults: tuple[str, ...] = faulting.KINDS
    cycles: int = 1
    warmup: float = 120.0
    redis_down: float = 75.0
    stall: float = 2.0
    evaluate_every: float = 60.0
    clear_minutes: int = 5
    sample_every: float = 5.0
    progress_every: float = 10.0
    drain_timeout: float = 30.0
    rss_bound_pct: float = 25.0
    rss_bound_mib: float = 40.0

    @property
    def per_wedding(self) -> int:
        return -(-self.connections // self.weddings)

    @property
    def reserve(self) -> float:
        """Seconds kept after the last fault starts: the longest fault, then long enough
        for its alerts to clear (two evaluations) and stay clear (``clear_minutes``), and
        an evaluation more (the fault moves to the middle between two)."""
        longest = max(self.redis_down, self.stall) + 10
        return longest + self.clear_minutes * 60 + 3 * self.evaluate_every

    def fault_window(self) -> tuple[float, float]:
        """(first, last) start time of the faults, in seconds after the load starts."""
        return self.warmup, self.duration - self.reserve

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "faults": list(self.faults), "per_wedding": self.per_wedding}


class Soak:
    """One soak: its state while it runs, and the figures the proofs read."""

    def __init__(self, options: SoakOptions, world: World, weddings: list[WeddingLogins],
                 say: Say) -> None:  # fmt: skip
        self.o = options
        self.world = world
        self.weddings = weddings
        self.say = say
        self.topics = sorted(w.topic for w in weddings)
        self.rss = RssTracker()
        self.ticks: list[dict[str, Any]] = []
        self.open_rules: set[str] = set()
        first, last = options.fault_window()
        self.faults = faulting.schedule(
            list(options.faults), options.cycles, warmup=first, last_at=last,
            redis_down=options.redis_down, evaluate_every=options.evaluate_every,
        )  # fmt: skip
        self.started = 0.0
        self.started_wall = 0.0
        self.evaluator_stuck = False
        self._received_last = (0.0, 0)

    async def run(self) -> dict[str, Any]:
        """The whole soak; the report's measured part (the proofs are added by the caller)."""
        o, world = self.o, self.world
        ws_url = world.server.ws_url
        plan = receivers_plan(self.weddings, o.connections, o.per_wedding)
        group = WorkerGroup(ws_url, plan, o.processes)
        publishers = Publishers(ws_url, [(w.topic, w.tokens) for w in self.weddings])
        publishers.acked = {}
        await group.start()
        background: list[asyncio.Task] = []
        try:
            self.say(f"opening {len(plan)} receiver connections in {group.size} process(es)")
            opened = merge_open(await group.open())
            await publishers.ensure(o.rate)
            starts = await asyncio.to_thread(final_seqs, self.topics)
            await group.call("window", starts)
            await self._evaluate("baseline")
            self.say(
                f"{opened['succeeded']}/{opened['attempted']} receivers subscribed, "
                f"{publishers.connections} publisher connections; {o.rate:g} publishes/s for "
                f"{o.duration:g} s; faults at "
                + ", ".join(f"{f.kind} {f.at_s:.0f}s" for f in self.faults)
            )
            self.started, self.started_wall = time.monotonic(), time.time()
            loop = asyncio.get_running_loop()
            background = [
                loop.create_task(self._sampling()),
                loop.create_task(self._progress(group, publishers)),
                loop.create_task(self._evaluations()),
            ]
            injecting = loop.create_task(self._inject_all())
            published = await publishers.run(o.rate, o.duration)
            await injecting
            publish_end = time.monotonic()
            finals = await asyncio.to_thread(final_seqs, self.topics)
            self.say(f"publishing over; draining (up to {o.drain_timeout:g} s)")
            totals, drain_s = merge_totals(await group.call("finish", finals, o.drain_timeout))
            live_at_end = group.summed_progress().get("live", 0)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            background = []
            self._sample_now()
            await self._evaluate("tick")  # the last word on the alerts
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            with contextlib.suppress(Exception):
                await publishers.close()
            counters = merge_counters(await group.close())
        return {
            "connections": {
                **opened,
                "publishers": publishers.connections,
                "live_at_end": live_at_end,
            },
            "publishes": published.as_dict(),
            "deliveries": deliveries(totals, (publish_end - self.started) + drain_s),
            "drain_s": round(drain_s, 3),
            "starts": starts,
            "finals": finals,
            "acked": publishers.acked,
            "receivers": counters,
            "faults": [f.as_dict() for f in self.faults],
            "evaluations": self.ticks,
            "started_wall": self.started_wall,
            "ended_wall": time.time(),
        }

    # --- background -----------------------------------------------------------------------

    async def _inject_all(self) -> None:
        o = self.o
        for fault in self.faults:
            delay = self.started + fault.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.say(f"[{self._t():6.1f}s] FAULT {fault.kind}: injecting")
            await faulting.inject(fault, self.world, redis_down=o.redis_down, stall=o.stall)
            what = fault.skipped or ", ".join(f"{k} {v}" for k, v in fault.detail.items())
            self.say(f"[{self._t():6.1f}s] FAULT {fault.kind}: over ({what})")

    async def _evaluations(self) -> None:
        every = self.o.evaluate_every
        next_at = self.started + every
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += every
            await self._evaluate("tick")

    async def _evaluate(self, command: str) -> None:
        if self.evaluator_stuck:
            answer: dict[str, Any] = {"ok": False, "error": "an earlier evaluation never ended"}
        else:
            try:
                answer = await asyncio.wait_for(
                    asyncio.to_thread(self.world.evaluator.run, command), EVALUATION_TIMEOUT_S
                )
            except TimeoutError:
                # Its answer may still come: later ones would be read out of turn.
                self.evaluator_stuck = True
                answer = {"ok": False, "error": f"no answer within {EVALUATION_TIMEOUT_S:g} s"}
        answer["t_s"] = round(self._t(), 1) if self.started else 0.0
        answer["command"] = command
        self.ticks.append(answer)
        if not answer.get("ok"):
            self.say(f"[{self._t():6.1f}s] evaluation failed: {answer.get('error')}")
            return
        for rule, change in answer.get("changes", {}).items():
            if change == "resolved":
                self.open_rules.discard(rule)
            else:
                self.open_rules.add(rule)
            self.say(f"[{self._t():6.1f}s] ALERT {rule} {change}")

    def _sample_now(self) -> dict[int, float]:
        return self.rss.sample(self.world.supervisor_pid, self.world.worker_pids())

    async def _sampling(self) -> None:
        while True:
            self._sample_now()
            await asyncio.sleep(self.o.sample_every)

    async def _progress(self, group: WorkerGroup, publishers: Publishers) -> None:
        self._received_last = (time.monotonic(), group.summed_progress().get("received", 0))
        while True:
            await asyncio.sleep(self.o.progress_every)
            p = group.summed_progress()
            now, received = time.monotonic(), p.get("received", 0)
            rate = (received - self._received_last[1]) / max(1e-6, now - self._received_last[0])
            self._received_last = (now, received)
            rss = self._sample_now()
            sup = rss.pop(self.world.supervisor_pid, None)
            workers = "/".join(f"{v:.0f}" for v in rss.values())
            alerts = ", ".join(sorted(self.open_rules)) or "none"
            self.say(
                f"[{self._t():6.1f}s] live {p.get('live', 0)} | delivered/s {rate:,.0f} | "
                f"published {publishers.ok_total} | dup {p.get('duplicates', 0)} | "
                f"reconnects {p.get('reconnects', 0)} | rss MiB supervisor {sup} "
                f"workers {workers} | alerts open: {alerts}"
            )

    def _t(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0
