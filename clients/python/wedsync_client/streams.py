"""Per-topic event streams: each tracked topic's events reach the application exactly
once and in ``seq`` order, whatever order and how many times the frames arrive.

An event at ``last + 1`` is delivered; one at or below ``last`` is a duplicate and
dropped; one beyond ``last + 1`` opens a gap and is held until the missing events come
(a replay, or frames still on their way). Each topic's position is a seq within a stream
epoch (v1.1): the history the seq counts in, sent back with it on a resume. A gap that
does not fill within
``gap_timeout``, or that holds more than ``GAP_BUFFER_MAX`` events, is handed to
``on_gap``: the client resynchronises (reconnects, and re-subscribes from ``last``).
No I/O here: the connection is the client's (``client.RealtimeClient``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from wedsync_client.errors import RequestTimeout

# An event beyond last_seq + 1 waits this long for the missing ones; a correct server
# never leaves a gap, so one that persists means a bug or a lost frame: resync.
GAP_TIMEOUT = 2.0
GAP_BUFFER_MAX = 1000  # events held per topic while waiting; beyond that, resync now


class TopicStreams:
    """The tracked topics: the last seq delivered of each, the events held beyond a gap,
    and the ``wait_for`` callers waiting for a seq."""

    def __init__(
        self,
        deliver: Callable[[dict], Awaitable[None]],
        on_gap: Callable[[str], None],
        gap_timeout: float = GAP_TIMEOUT,
    ) -> None:
        self.deliver = deliver  # each event, once and in order
        self.on_gap = on_gap  # a gap did not fill: resynchronise the topic
        self.gap_timeout = gap_timeout
        self.last: dict[str, int] = {}  # tracked topic -> last delivered seq
        # tracked topic -> the stream epoch ``last`` counts in (servers before v1.1 send
        # none: such topics have no entry, and resume with ``since`` alone)
        self.epochs: dict[str, str] = {}
        self.held: dict[str, dict[int, dict]] = {}  # events beyond a gap, per topic
        self.waiters: dict[str, list[tuple[int, asyncio.Future]]] = {}
        self._gap_timers: dict[str, asyncio.TimerHandle] = {}

    async def receive(self, frame: dict) -> None:
        """An event frame: deliver it (and what it unblocks), hold it, or drop it."""
        topic, seq = frame.get("topic"), frame.get("seq")
        last = self.last.get(topic)
        if last is None or seq <= last:
            return  # not subscribed, or a duplicate
        if seq == last + 1:
            await self._deliver(topic, seq, frame)
            if topic in self.held:
                await self.drain(topic)
        else:
            self._hold(topic, seq, frame)

    async def drain(self, topic: str) -> None:
        """Deliver held events that are now next in line; drop those already delivered
        (nothing to do when none is held)."""
        while (held := self.held.get(topic)) and (last := self.last.get(topic)) is not None:
            frame = held.pop(last + 1, None)
            if frame is None:
                for seq in [s for s in held if s <= last]:
                    del held[seq]
                if held:
                    return  # still a gap: the timer keeps running
                break
            await self._deliver(topic, last + 1, frame)
        self.clear_gap(topic)

    def set_last(self, topic: str, seq: int) -> None:
        """Track ``topic`` from ``seq`` (a subscribe, a reset), waking its waiters."""
        self.last[topic] = seq
        for want, fut in self.waiters.get(topic, ()):
            if seq >= want and not fut.done():
                fut.set_result(None)

    def set_epoch(self, topic: str, epoch: Any) -> None:
        """The stream epoch ``topic``'s position counts in, as the server named it (a
        value that is not a non-empty string is not an epoch: nothing is recorded)."""
        if isinstance(epoch, str) and epoch:
            self.epochs[topic] = epoch
        else:
            self.epochs.pop(topic, None)

    def forget(self, topic: Any) -> None:
        """Stop tracking ``topic``: unsubscribed, or refused by the server."""
        self.last.pop(topic, None)
        self.epochs.pop(topic, None)
        self.clear_gap(topic)

    def clear_gap(self, topic: Any) -> None:
        """Drop the events held for ``topic`` and stop its gap timer."""
        self.held.pop(topic, None)
        timer = self._gap_timers.pop(topic, None)
        if timer is not None:
            timer.cancel()

    def clear_gaps(self) -> None:
        """The connection was lost: the held events come back in the re-subscribe's replay."""
        for topic in list(self.held):
            self.clear_gap(topic)

    async def wait_for(self, topic: str, seq: int, timeout: float) -> None:
        """Return once ``last[topic] >= seq``; raises RequestTimeout after ``timeout``."""
        if self.last.get(topic, -1) >= seq:
            return
        entry = (seq, asyncio.get_running_loop().create_future())
        self.waiters.setdefault(topic, []).append(entry)
        try:
            async with asyncio.timeout(timeout):
                await entry[1]
        except TimeoutError:
            raise RequestTimeout("timeout", f"{topic} did not reach seq {seq}") from None
        finally:
            waiters = self.waiters.get(topic, [])
            if entry in waiters:
                waiters.remove(entry)

    def fail_waiters(self, error: BaseException) -> None:
        """The client stopped: every ``wait_for`` raises ``error``."""
        for waiters in self.waiters.values():
            for _, fut in waiters:
                if not fut.done():
                    fut.set_exception(error)
        self.waiters.clear()

    async def _deliver(self, topic: str, seq: int, frame: dict) -> None:
        self.last[topic] = seq
        await self.deliver(frame)
        if self.waiters:
            self.set_last(topic, seq)

    def _hold(self, topic: str, seq: int, frame: dict) -> None:
        held = self.held.setdefault(topic, {})
        held[seq] = frame
        if topic not in self._gap_timers:
            self._gap_timers[topic] = asyncio.get_running_loop().call_later(
                self.gap_timeout, self._gap_expired, topic
            )
        if len(held) > GAP_BUFFER_MAX:
            self.on_gap(topic)

    def _gap_expired(self, topic: str) -> None:
        self._gap_timers.pop(topic, None)
        if self.held.get(topic):
            self.on_gap(topic)
