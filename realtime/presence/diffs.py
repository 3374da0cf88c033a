"""The presence diffs a process sends (PROTOCOL §6 presence_diff), merged per topic.

A process sends the presence diffs of a topic at most once per PRESENCE_BATCH_S, the
joins and leaves of that time in one presence_diff (the last change of each user wins).
A reconnect storm of N clients on a topic then costs a few sends and a few frames per
member instead of 2N of each: the channel layer sends one message at a time per process,
and 2,000 diffs in a burst held it for seconds (docs/benchmarks.md). A fifth of a second
is not a delay anyone sees in a list of who is here. Each event loop's node
(``realtime.node``) has one batcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from core.breaker import CircuitOpen
from realtime import protocol
from realtime.layer import group_send_bounded
from realtime.messages import group_name, presence_message

logger = logging.getLogger(__name__)

PRESENCE_BATCH_S = 0.2


class DiffBatcher:
    """The presence diffs this process sends, merged per topic over PRESENCE_BATCH_S.

    ``add`` records joins and leaves; a timer sends each topic's merged diff to the
    topic's group (every process's hub hands it to the local subscribers). Per user the
    last change wins: left and back within the batch is a join, which a client that
    still lists the user ignores. Best effort, like presence itself (PROTOCOL §7).
    """

    def __init__(self) -> None:
        self._pending: dict[str, dict[int, tuple[bool, dict]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task] = set()

    def add(self, topic: str, joins: Iterable[dict], leaves: Iterable[dict]) -> None:
        """Announce users who arrived on (``joins``) or fully left (``leaves``) a topic."""
        changes = self._pending.setdefault(topic, {})
        for joined, members in ((True, joins), (False, leaves)):
            for member in members:
                changes.pop(member["user_id"], None)  # re-inserted last: the latest change
                changes[member["user_id"]] = (joined, member)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(PRESENCE_BATCH_S, self.flush)

    def flush(self) -> None:
        """Send what is pending now (the timer; the shutdown drain)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for topic, changes in pending.items():
            joins = [member for joined, member in changes.values() if joined]
            leaves = [member for joined, member in changes.values() if not joined]
            task = asyncio.ensure_future(_send_diff(topic, joins, leaves))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        """Send what is pending and wait for the sends (a graceful shutdown)."""
        self.flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


async def _send_diff(topic: str, joins: list[dict], leaves: list[dict]) -> None:
    text = protocol.presence_diff(topic, joins, leaves)
    try:
        await group_send_bounded(group_name(topic), presence_message(topic, text))
    except CircuitOpen:  # Redis is down (the breaker logged it); presence is best effort
        pass
    except Exception as exc:  # best effort: events never depend on it
        logger.warning("presence diff on %s not sent (%s)", topic, type(exc).__name__)
