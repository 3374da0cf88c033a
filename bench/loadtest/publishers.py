"""The publishing side of the load benchmark, on the project's client (``RealtimeClient``).

Publishes are open-loop: the schedule fires at the requested total rate whatever the
server's replies do, so a slow server shows as latency, not as a lower offered load.
Each publish is a ``message.posted`` whose text carries its send time
(``accounting.publish_text``); publishes are spread round-robin over the weddings and,
within a wedding, over its publisher connections, each kept at or below
``scenarios.PUBLISHER_MAX_RATE`` (half the server's per-connection limit).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from wedsync_client.client import ClientError, RealtimeClient

from .accounting import Latencies, publish_text
from .scenarios import publishers_per_wedding

EVENT = "message.posted"
# Publishes awaiting their reply on one connection; past this the schedule skips a tick
# (counted) instead of piling requests up without bound.
MAX_IN_FLIGHT = 64


@dataclass
class PublishStats:
    """What one publishing run did."""

    scheduled: int = 0
    sent: int = 0
    ok: int = 0
    skipped: int = 0  # ticks skipped because the connection had MAX_IN_FLIGHT pending
    errors: Counter = field(default_factory=Counter)
    reply_ms: Latencies = field(default_factory=Latencies)
    seconds: float = 0.0  # from the first scheduled publish to the last one sent
    tail_s: float = 0.0  # then until the last reply came back
    max_lag_ms: float = 0.0  # how far the schedule fell behind at worst

    def as_dict(self) -> dict[str, Any]:
        return {
            "scheduled": self.scheduled,
            "sent": self.sent,
            "ok": self.ok,
            "skipped": self.skipped,
            "errors": dict(self.errors),
            "seconds": round(self.seconds, 3),
            "reply_tail_s": round(self.tail_s, 3),
            "rate_sent": round(self.sent / self.seconds, 2) if self.seconds else None,
            "max_schedule_lag_ms": round(self.max_lag_ms, 1),
            "reply_latency": self.reply_ms.summary(),
        }


class _Publisher:
    def __init__(self, client: RealtimeClient, topic: str, name: str) -> None:
        self.client, self.topic, self.name = client, topic, name
        self.in_flight = 0
        self.count = itertools.count(1)


class Publishers:
    """Publisher connections for a set of weddings, grown as the rate asks."""

    def __init__(self, url: str, weddings: list[tuple[str, list[str]]]) -> None:
        self.url = url
        self.weddings = weddings  # (topic, tokens of its users) per wedding
        self.by_wedding: list[list[_Publisher]] = [[] for _ in weddings]
        self.failed = 0
        self.ok_total = 0  # over every run, for the progress line
        # The seqs acknowledged per topic, when a caller wants them (the soak's proof);
        # None: not kept (a long run at a high rate would hold them all).
        self.acked: dict[str, list[int]] | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def connections(self) -> int:
        return sum(len(p) for p in self.by_wedding)

    async def ensure(self, rate: float) -> None:
        """Connect enough publishers for ``rate`` publishes/s in total."""
        want = publishers_per_wedding(rate, len(self.weddings))
        pending = []
        for index, (topic, tokens) in enumerate(self.weddings):
            for k in range(len(self.by_wedding[index]), want):
                token = tokens[k % len(tokens)]
                pending.append((index, topic, token, f"w{index}p{k}"))

        async def connect(index: int, topic: str, token: str, name: str) -> None:
            client = RealtimeClient(self.url, token=token, request_timeout=30.0)
            try:
                await client.connect()
            except Exception as exc:
                self.failed += 1
                # The command reports a RuntimeError as the run's failure, with the server's
                # output (a server out of file descriptors closes handshakes unanswered).
                raise RuntimeError(f"publisher {name} could not connect: {exc!r}") from exc
            self.by_wedding[index].append(_Publisher(client, topic, name))

        for i in range(0, len(pending), 100):  # 100 handshakes at a time
            await asyncio.gather(*(connect(*args) for args in pending[i : i + 100]))

    def _order(self, rate: float) -> list[_Publisher]:
        """Round-robin over weddings first, then over each wedding's publishers."""
        want = publishers_per_wedding(rate, len(self.weddings))
        return [pubs[k] for k in range(want) for pubs in self.by_wedding if k < len(pubs)]

    async def run(self, rate: float, duration: float) -> PublishStats:
        """Publish at ``rate`` per second for ``duration`` seconds, then await the replies."""
        await self.ensure(rate)
        order = self._order(rate)
        stats = PublishStats()
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        total = max(1, round(rate * duration))
        started = loop.time()
        cycle = itertools.cycle(order)
        for n in range(total):
            due = started + n * interval
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                stats.max_lag_ms = max(stats.max_lag_ms, (now - due) * 1000)
            stats.scheduled += 1
            publisher = next(cycle)
            if publisher.in_flight >= MAX_IN_FLIGHT:
                stats.skipped += 1
                continue
            self._spawn(self._publish(publisher, stats))
        # The schedule's length: n ticks span n - 1 intervals, plus the last one's own.
        stats.seconds = max(loop.time() - started, total * interval)
        sent_at = loop.time()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=60)
        stats.tail_s = loop.time() - sent_at
        return stats

    async def _publish(self, publisher: _Publisher, stats: PublishStats) -> None:
        publisher.in_flight += 1
        stats.sent += 1
        started = time.perf_counter()
        text = publish_text(time.time_ns(), f"{publisher.name}-{next(publisher.count)}")
        try:
            seq = await publisher.client.publish(publisher.topic, EVENT, {"text": text})
        except ClientError as exc:
            stats.errors[exc.code] += 1
        else:
            stats.ok += 1
            if self.acked is not None:
                self.acked.setdefault(publisher.topic, []).append(seq)
            self.ok_total += 1
            stats.reply_ms.add((time.perf_counter() - started) * 1000)
        finally:
            publisher.in_flight -= 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *(p.client.close() for pubs in self.by_wedding for p in pubs), return_exceptions=True
        )
