"""The per-connection outbox (realtime/delivery.py): order, bounds, the writer's life; and
the delivery latency of events filled from the log."""

from __future__ import annotations

import asyncio
import datetime as dt

import orjson
import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from core import metrics
from realtime.delivery import Outbox, OutboxFull, TopicStream, catch_up_topic, fill
from realtime.models import Event
from realtime.services import event_publish_system

pytestmark = pytest.mark.timeout(10)


class Socket:
    """A send callable that records frames; ``hold`` makes sends wait until released."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.open = asyncio.Event()
        self.open.set()
        self.fail = False

    async def send(self, text: str) -> None:
        await self.open.wait()
        if self.fail:
            raise OSError("gone")
        self.frames.append(text)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def outbox(socket: Socket, maxsize: int = 4, put_timeout: float = 0.2) -> Outbox:
    return Outbox(socket.send, maxsize=maxsize, put_timeout=put_timeout)


async def test_outbox__writes_frames_in_order():
    socket = Socket()
    box = outbox(socket, maxsize=100)
    for n in range(50):
        box.put_nowait(str(n))
    await box.put("reply")
    await settle()
    assert socket.frames == [str(n) for n in range(50)] + ["reply"]
    assert box.depth == 0


async def test_outbox__put_nowait_beyond_maxsize_is_outbox_full():
    # given a client that reads nothing
    socket = Socket()
    socket.open.clear()
    box = outbox(socket, maxsize=3)
    box.put_nowait("0")
    await settle()  # the writer took "0" and waits on the socket
    for n in range(1, 4):
        box.put_nowait(str(n))
    # then the next live frame does not fit
    with pytest.raises(OutboxFull):
        box.put_nowait("4")
    assert box.depth == 3


async def test_outbox__put_waits_for_room_then_times_out_as_outbox_full():
    socket = Socket()
    socket.open.clear()
    box = outbox(socket, maxsize=1, put_timeout=0.1)
    box.put_nowait("0")
    await settle()
    box.put_nowait("1")
    with pytest.raises(OutboxFull):
        await box.put("2")


async def test_outbox__two_waiting_puts_both_go_through_once_there_is_room():
    # given a full outbox and two replies waiting for room
    socket = Socket()
    socket.open.clear()
    box = outbox(socket, maxsize=1, put_timeout=5)
    box.put_nowait("0")
    await settle()
    box.put_nowait("1")
    first = asyncio.ensure_future(box.put("a"))
    second = asyncio.ensure_future(box.put("b"))
    await settle()
    assert not first.done() and not second.done()
    # when the client reads again
    socket.open.set()
    await asyncio.gather(first, second)
    await settle()
    # then everything went out, in order
    assert socket.frames[:2] == ["0", "1"]
    assert sorted(socket.frames[2:]) == ["a", "b"]


async def test_outbox__released_writer_ends_and_the_next_frame_starts_another():
    socket = Socket()
    box = outbox(socket)
    box.put_nowait("1")
    await settle()
    assert box._writer is not None  # waiting for more frames
    # when the sweep releases it
    box.release()
    await settle()
    assert box._writer is None
    # then a later frame is still written
    box.put_nowait("2")
    await settle()
    assert socket.frames == ["1", "2"]


async def test_outbox__release_leaves_a_busy_writer_alone():
    socket = Socket()
    socket.open.clear()
    box = outbox(socket)
    box.put_nowait("1")
    box.put_nowait("2")
    await settle()
    box.release()
    socket.open.set()
    await settle()
    assert socket.frames == ["1", "2"]


async def test_outbox__drain_waits_for_the_frame_being_written():
    socket = Socket()
    socket.open.clear()
    box = outbox(socket)
    box.put_nowait("last")
    await settle()
    assert box.depth == 0  # taken by the writer, not yet written
    drained = asyncio.ensure_future(box.drain(timeout=5))
    await settle()
    assert not drained.done()
    socket.open.set()
    await drained
    assert socket.frames == ["last"]


async def test_outbox__failed_socket_drops_later_frames_quietly():
    socket = Socket()
    socket.fail = True
    box = outbox(socket)
    box.put_nowait("1")
    await settle()
    box.put_nowait("2")
    await box.put("3")
    await box.drain(timeout=1)
    assert socket.frames == []
    assert box._writer is None


async def test_outbox__stop_drops_what_is_queued():
    socket = Socket()
    socket.open.clear()
    box = outbox(socket)
    for n in range(3):
        box.put_nowait(str(n))
    await settle()
    box.stop()
    socket.open.set()
    await settle()
    assert socket.frames == []
    box.put_nowait("after")
    await settle()
    assert socket.frames == []


# --- late events in the delivery latency ----------------------------------------------------


def _latency_figures() -> tuple[float, float]:
    """(count, sum in seconds) of this process's delivery latency histogram."""
    count = total = 0.0
    for metric in metrics.DELIVERY_LATENCY.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
    return count, total


@database_sync_to_async
def _stored_long_ago(topic: str, count: int, seconds: float) -> None:
    for i in range(count):
        event_publish_system(topic, "message.posted", {"text": f"late {i}"})
    Event.objects.filter(topic=topic).update(
        created_at=timezone.now() - dt.timedelta(seconds=seconds)
    )


@pytest.mark.django_db(transaction=True)
async def test_fill__events_the_layer_lost_count_in_the_latency_as_late_as_they_are():
    # given: three events stored 30 s ago that never reached the connection live (the
    # layer lost them, as through a Redis outage)
    await _stored_long_ago("wedding:8801", 3, 30)
    socket = Socket()
    box = outbox(socket, maxsize=16)
    stream = TopicStream("wedding:8801", last_seq=0, syncing=False)
    count, total = _latency_figures()

    # when: the gap fill or the sweep's catch-up delivers them from the log
    await fill(stream, box, None, live=True)
    await box.drain(1)

    # then: delivered in order, each counted about 30 s late (the latency alert sees it)
    assert [orjson.loads(f)["seq"] for f in socket.frames] == [1, 2, 3]
    new_count, new_total = _latency_figures()
    assert new_count - count == 3
    assert 3 * 29 <= new_total - total <= 3 * 60


@pytest.mark.django_db(transaction=True)
async def test_fill__a_replay_is_not_late():
    # given: the same old events, replayed to a subscriber that was away
    await _stored_long_ago("wedding:8802", 3, 30)
    socket = Socket()
    box = outbox(socket, maxsize=16)
    stream = TopicStream("wedding:8802", last_seq=0)
    count, _ = _latency_figures()

    # when
    await fill(stream, box, None, live=False)
    await box.drain(1)

    # then: delivered, not counted as late deliveries
    assert len(socket.frames) == 3
    assert _latency_figures()[0] == count


@pytest.mark.django_db(transaction=True)
async def test_catch_up_topic__each_stream_gets_what_it_lacks_in_order_once():
    # given: 6 events the layer lost, and three connections of the topic at different
    # positions (one has everything, one is behind by 4, one by 6 with a tiny outbox)
    await _stored_long_ago("wedding:8803", 6, 1)
    sockets = [Socket(), Socket(), Socket()]
    boxes = [outbox(sockets[0], maxsize=16), outbox(sockets[1], maxsize=16), outbox(sockets[2], 2)]
    streams = [
        TopicStream("wedding:8803", last_seq=6, syncing=False),
        TopicStream("wedding:8803", last_seq=2, syncing=False),
        TopicStream("wedding:8803", last_seq=0, syncing=False),
    ]
    overflowed: list[Outbox] = []

    async def on_full(box: Outbox) -> None:
        overflowed.append(box)

    # when: the sweep catches the topic up to seq 6
    last = await catch_up_topic("wedding:8803", list(zip(streams, boxes, strict=True)), 6, on_full)
    for box in boxes[:2]:
        await box.drain(1)

    # then: the one behind by 4 got 3..6 once and in order, the one up to date nothing;
    # the one whose outbox cannot take 6 frames is handed over to be closed
    assert last == 6
    assert sockets[0].frames == []
    assert [orjson.loads(f)["seq"] for f in sockets[1].frames] == [3, 4, 5, 6]
    assert streams[1].last_seq == 6
    assert overflowed == [boxes[2]]
