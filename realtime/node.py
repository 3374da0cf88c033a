"""The realtime node: what the connections of one event loop share, made in one place.

A server process runs one event loop (uvicorn's) and so one node; tests and
``async_to_sync`` run several loops in one process, and asyncio objects (tasks, timers,
futures, channel-layer receives) belong to the loop that made them, hence one node per
loop, made on first use by ``get_node()``. A node owns:

* ``hub``: the topic hub (``realtime.hub``), one channel-layer group membership per topic
  and the fan-out of each message to the loop's connections;
* ``diffs``: the presence diff batcher (``realtime.presence.diffs``);
* ``sends``: the event broadcasts handed over by database threads, in seq order per topic
  (``realtime.layer.TopicSends``);
* ``consumers``: the loop's live connections, their sweep and their drain
  (``realtime.consumer_registry``).

Process-wide rather than per loop: whether the process is draining after SIGTERM
(``process``), the connection counter and the presence store (one per configured Redis,
used from sync code too), and the Redis clients (``realtime.redis_client``: one per loop
and URL, for any loop that reads counts or presence, a node's or not).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

from core import metrics

from .consumer_registry import ConsumerRegistry
from .hub import TopicHub
from .layer import TopicSends
from .presence.diffs import DiffBatcher

if TYPE_CHECKING:
    from .consumers import RealtimeConsumer


class Node:
    """The realtime state of one event loop (see the module's docstring)."""

    __slots__ = ("consumers", "diffs", "hub", "sends")

    def __init__(self) -> None:
        self.hub = TopicHub()
        self.diffs = DiffBatcher()
        self.sends = TopicSends()
        self.consumers = ConsumerRegistry(self.hub, self.diffs)


_nodes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Node] = weakref.WeakKeyDictionary()


def get_node() -> Node:
    """The node of the running event loop (made on first use)."""
    loop = asyncio.get_running_loop()
    node = _nodes.get(loop)
    if node is None:
        node = _nodes[loop] = Node()
    return node


def get_hub() -> TopicHub:
    """The running event loop's hub (``get_node().hub``)."""
    return get_node().hub


def all_nodes() -> list[Node]:
    """Every node of the process; safe to call from another thread (the metrics sampler)
    while an event loop makes one."""
    for _ in range(3):
        try:
            return list(_nodes.values())
        except RuntimeError:  # a node was made (or a loop collected) during the copy
            continue
    return []


class Process:
    """This server process: draining after SIGTERM, whatever the event loop."""

    def __init__(self) -> None:
        self.draining = False  # set on SIGTERM: no new connections, no new publishes

    async def shutdown(self, grace: float) -> None:
        """Drain this process (SIGTERM): refuse new connections and publishes, let the
        frames in flight finish (up to ``grace`` seconds), then close every connection
        of the running loop's node with 1012 (``ConsumerRegistry.drain``)."""
        self.draining = True
        await get_node().consumers.drain(grace)

    def consumers(self) -> list[RealtimeConsumer]:
        """Every live connection of the process (any thread: the metrics sampler)."""
        return [c for node in all_nodes() for c in node.consumers.consumers()]


process = Process()


def sample_metrics() -> None:
    """Set this process's connection gauges (``core.metrics`` calls it on every sample)."""
    open_ = [c for c in process.consumers() if not getattr(c, "closing", False)]
    depths = [_outbox_depth(c) for c in open_]
    metrics.CONNECTIONS.set(len(open_))
    metrics.SUBSCRIPTIONS.set(sum(len(getattr(c, "streams", ())) for c in open_))
    metrics.PRESENCE.set(sum(len(getattr(c, "members", ())) for c in open_))
    metrics.OUTBOX_DEPTH.set(sum(depths))
    metrics.OUTBOX_DEPTH_MAX.set(max(depths, default=0))


def _outbox_depth(consumer: Any) -> int:
    outbox = getattr(consumer, "outbox", None)
    return int(getattr(outbox, "depth", 0) or 0) if outbox is not None else 0
