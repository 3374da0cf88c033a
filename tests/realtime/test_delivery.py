"""The per-connection outbox (realtime/delivery.py): order, bounds, the writer's life."""

from __future__ import annotations

import asyncio

import pytest

from realtime.delivery import Outbox, OutboxFull

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
