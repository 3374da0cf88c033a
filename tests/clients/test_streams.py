"""Per-topic ordering and gap buffering (``wedsync_client.streams``), without a server."""

from __future__ import annotations

import asyncio

import pytest
from wedsync_client.errors import ConnectionLost, RequestTimeout
from wedsync_client.streams import GAP_BUFFER_MAX, TopicStreams

pytestmark = pytest.mark.timeout(5)


class Recorder:
    def __init__(self, gap_timeout: float = 2.0) -> None:
        self.delivered: list[tuple[str, int]] = []
        self.gaps: list[str] = []
        self.streams = TopicStreams(self.deliver, self.gaps.append, gap_timeout)

    async def deliver(self, frame: dict) -> None:
        self.delivered.append((frame["topic"], frame["seq"]))

    async def feed(self, topic: str, *seqs: int) -> None:
        for seq in seqs:
            await self.streams.receive({"type": "event", "topic": topic, "seq": seq})


async def test_receive__in_order_once_whatever_the_arrival_order() -> None:
    rec = Recorder()
    rec.streams.set_last("wedding:1", 0)

    await rec.feed("wedding:1", 1, 1, 3, 2, 2, 3, 5, 4)
    await rec.feed("wedding:9", 1)  # not tracked

    assert rec.delivered == [("wedding:1", s) for s in (1, 2, 3, 4, 5)]
    assert rec.streams.last == {"wedding:1": 5}
    assert rec.streams.held == {} and rec.gaps == []


async def test_gap__that_does_not_fill_in_time_is_handed_on_once() -> None:
    rec = Recorder(gap_timeout=0.05)
    rec.streams.set_last("wedding:1", 0)

    await rec.feed("wedding:1", 2, 3)
    await asyncio.sleep(0.1)

    assert rec.delivered == [] and rec.gaps == ["wedding:1"]
    rec.streams.clear_gaps()  # the connection is dropped; the replay brings them back
    await rec.feed("wedding:1", 1, 2, 3)
    assert [s for _, s in rec.delivered] == [1, 2, 3]


async def test_gap__holding_too_many_events_is_handed_on_at_once() -> None:
    rec = Recorder()
    rec.streams.set_last("wedding:1", 0)

    await rec.feed("wedding:1", *range(2, GAP_BUFFER_MAX + 3))

    assert rec.gaps and set(rec.gaps) == {"wedding:1"}
    rec.streams.forget("wedding:1")
    assert rec.streams.held == {} and "wedding:1" not in rec.streams.last


async def test_set_last__after_a_reset_drain_drops_what_the_snapshot_holds() -> None:
    rec = Recorder()
    rec.streams.set_last("wedding:1", 0)
    await rec.feed("wedding:1", 3, 4, 6)

    rec.streams.set_last("wedding:1", 4)  # a snapshot up to 4 was reloaded
    await rec.streams.drain("wedding:1")
    await rec.feed("wedding:1", 5)

    assert [s for _, s in rec.delivered] == [5, 6]


async def test_wait_for__wakes_at_the_seq_times_out_or_fails_with_the_client() -> None:
    rec = Recorder()
    rec.streams.set_last("wedding:1", 0)
    waiting = asyncio.ensure_future(rec.streams.wait_for("wedding:1", 2, timeout=1))
    await rec.feed("wedding:1", 1, 2)
    await waiting

    with pytest.raises(RequestTimeout):
        await rec.streams.wait_for("wedding:1", 3, timeout=0.01)
    assert rec.streams.waiters["wedding:1"] == []

    stopped = asyncio.ensure_future(rec.streams.wait_for("wedding:1", 3, timeout=1))
    await asyncio.sleep(0)
    rec.streams.fail_waiters(ConnectionLost("closed", "client closed"))
    with pytest.raises(ConnectionLost):
        await stopped
