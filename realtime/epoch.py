"""The stream epoch (PROTOCOL §4, v1.1): which history of the event log a seq counts in.

A seq says where a client is in a topic's history; after a point-in-time restore of the
database the log's seqs are handed out again for other events, and a client resuming
with ``since`` would merge two histories without noticing. The epoch names the history:
an opaque string, one for the whole deployment (``models.StreamEpoch``, one row, seeded
by its migration), replaced by ``python manage.py stream_epoch --bump`` after a restore.
Subscribe replies, snapshots and history pages carry it; a ``since`` sent with another
epoch gets ``recovered: false`` and no replay, and the client reloads its snapshot.

**Decision**: per deployment, not per topic. A restore rewinds every topic at once, and
one row is one read; the wire carries it per topic, so a per-topic epoch could follow
without a protocol change.

It is read on every subscribe, snapshot and history page, so through the two-tier cache
(key ``stream_epoch``), with ``EPOCH_TTL`` in both tiers: a warm read is a dictionary
lookup, and the deployment reads the row at most once per ``EPOCH_TTL``.

How soon a bump is seen (the bound, ``EPOCH_BOUND``):

* The bump deletes the cached value in Redis and publishes the cache's invalidation
  message after its commit: every process drops its copy within milliseconds, and its
  next subscribe answers with the new epoch.
* When that message is lost (Redis restarting, a listener reconnecting), the bump could
  not reach Redis, or there is no Redis (the embedded default: the command is another
  process), a copy lives at most ``EPOCH_TTL`` in Redis and then ``EPOCH_TTL`` in a
  process: no process answers with the old epoch later than ``2 x EPOCH_TTL`` (10 s)
  after the bump.
* What a process already holds from the old history goes too, when it first sees the new
  epoch (``observe``): its hub's recent events are forgotten, and its connections
  subscribed under the old epoch are closed with 1012 (reconnect with ``since``); each
  event loop checks every ``WATCH_INTERVAL`` while it has connections. So within
  ``EPOCH_BOUND`` (11 s) every connection has either reloaded or been closed.
* A process that cannot reach the database keeps the last epoch it read (as it serves
  snapshots from the cache then): it cannot learn of a bump, and it has nothing newer to
  serve either. It answers the new one within ``EPOCH_BOUND`` of reaching it again.

Until the bump, the restored log is served under the old epoch: the bump belongs right
after the restore, before the servers take traffic (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from core.cache import get_cache
from core.db import in_db_thread

from .models import StreamEpoch
from .protocol import CLOSE_RESTARTING
from .replay import forget_recent

if TYPE_CHECKING:
    from .hub import TopicHub
    from .node import Node

logger = logging.getLogger(__name__)

EPOCH_KEY = "stream_epoch"
# How long a read epoch is kept, in Redis and in a process. A load is one primary-key
# read per deployment per EPOCH_TTL; the bound on a lost invalidation is twice this.
EPOCH_TTL = 5.0
# How often an event loop with connections reads the epoch (a cache hit, almost always)
# to close the connections subscribed under an old one.
WATCH_INTERVAL = 1.0
# The longest a bump takes to reach every process and connection (see the docstring).
EPOCH_BOUND = 2 * EPOCH_TTL + WATCH_INTERVAL
# What ``--reason`` may say (StreamEpoch.reason).
MAX_REASON_CHARS = 200
# Why a connection is closed on a bump: a 1012, which every client answers by
# reconnecting with ``since`` (and a v1.1 client with its epoch, which reloads).
CLOSE_EPOCH_CHANGED = "stream epoch changed; reconnect"


def epoch_new() -> str:
    """A fresh epoch: 12 random hex characters (48 bits: a bump does not come back to an
    earlier one)."""
    return uuid.uuid4().hex[:12]


def epoch_load() -> str:
    """The epoch from the database. An empty table (emptied by hand, or by a test's flush)
    gets a fresh epoch, as a new database does: nothing can resume into it."""
    epoch = StreamEpoch.objects.filter(pk=StreamEpoch.ROW).values_list("epoch", flat=True).first()
    if epoch is not None:
        return epoch
    StreamEpoch.objects.bulk_create(
        [StreamEpoch(pk=StreamEpoch.ROW, epoch=epoch_new(), reason="first read")],
        ignore_conflicts=True,  # another process made it first: theirs stands
    )
    return StreamEpoch.objects.values_list("epoch", flat=True).get(pk=StreamEpoch.ROW)


_aload = in_db_thread(epoch_load)
# The epoch this process read last: what it answers while the database is unreachable.
_last_read: str | None = None


def epoch_current() -> str:
    """The deployment's epoch through the cache (sync code: the history, the snapshot).
    ``DatabaseError`` only when it is neither cached nor loadable, nor read before."""
    global _last_read
    try:
        epoch = get_cache().get_or_load(EPOCH_KEY, epoch_load, ttl=EPOCH_TTL)
    except DatabaseError:
        if _last_read is None:
            raise
        return _last_read
    _last_read = epoch
    return epoch


async def aepoch_current() -> str:
    """``epoch_current`` on the event loop: a cached epoch costs no thread and no query."""
    global _last_read
    try:
        epoch = await get_cache().aget_or_load(EPOCH_KEY, _aload, ttl=EPOCH_TTL)
    except DatabaseError:
        if _last_read is None:
            raise
        return _last_read
    _last_read = epoch
    return epoch


def epoch_invalidate() -> None:
    """Drop the cached epoch in every process: now, and again after the current commit
    (a reader that loaded the old row in between cannot keep it)."""
    cache = get_cache()
    cache.delete(EPOCH_KEY)
    if connection.in_atomic_block:
        transaction.on_commit(lambda: cache.delete(EPOCH_KEY))


def stream_epoch_bump(*, reason: str) -> StreamEpoch:
    """Start a new history: a fresh epoch, recorded with when and why, and the cached one
    dropped everywhere. Called after a restore (``manage.py stream_epoch --bump``).

    Raises ``ValueError`` for a blank or too long reason; nothing changes then.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("a reason is required (what happened to the event log)")
    reason = reason.strip()
    if len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"the reason is at most {MAX_REASON_CHARS} characters")
    epoch_load()  # the row exists (made when the table was empty), so it can be locked
    with transaction.atomic():
        row = StreamEpoch.objects.select_for_update().get(pk=StreamEpoch.ROW)
        previous, row.previous = row.epoch, row.epoch
        row.epoch = epoch_new()
        row.changed_at = timezone.now()
        row.reason = reason
        row.save()
        epoch_invalidate()
    # The record that outlives the row: a later restore rewinds the row as well.
    logger.warning(
        "stream epoch bumped: %s -> %s (%s); every server process answers with it within %g s",
        previous,
        row.epoch,
        reason,
        EPOCH_BOUND,
    )
    return row


# --- what each event loop has seen ------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    """The epoch an event loop's node answered with last, and its watcher task."""

    epoch: str | None = None
    watcher: asyncio.Task | None = None


# Per hub (one per event loop, ``realtime.node``); weak, so a finished loop's node goes.
_seen: weakref.WeakKeyDictionary[TopicHub, _Seen] = weakref.WeakKeyDictionary()


async def observe(node: Node) -> str:
    """The epoch a subscribe on this node answers with, read before the subscribe opens
    its streams. The first sight of a new one makes the node drop what it holds of the old
    history (``_changed``); the node's watcher is started, to see it without subscribes."""
    epoch = await aepoch_current()
    seen = _seen.get(node.hub)
    if seen is None:
        seen = _seen[node.hub] = _Seen()
    _note(node, seen, epoch)
    if seen.watcher is None or seen.watcher.done():
        seen.watcher = asyncio.ensure_future(_watch(node, seen))
    return epoch


def still_current(node: Node, epoch: str) -> bool:
    """Whether ``epoch`` (what a subscribe read in ``observe``) is still the one the node
    answers with: a bump seen while the frame ran (before it opened its streams, so
    ``_changed`` did not close it) makes the frame's answer another history's."""
    seen = _seen.get(node.hub)
    return seen is None or seen.epoch == epoch


def _note(node: Node, seen: _Seen, epoch: str) -> None:
    previous, seen.epoch = seen.epoch, epoch
    if previous is not None and previous != epoch:
        _changed(node, previous, epoch)


def _changed(node: Node, previous: str, epoch: str) -> None:
    """A new history: the hub's recent events are of the old one (a subscribe must not be
    answered from them), and so are the positions of every connection subscribed until
    now (live events of the new history at seqs they already passed would be dropped as
    repeats). Those connections close with 1012: their clients resume with the old epoch,
    get ``recovered: false`` and reload."""
    forget_recent(node.hub)
    subscribed = [c for c in node.consumers.consumers() if c.streams and not c.closing]
    logger.warning(
        "stream epoch %s -> %s: recent events forgotten, %d connections closed with 1012",
        previous,
        epoch,
        len(subscribed),
    )
    for consumer in subscribed:
        node.hub.spawn(consumer.close(CLOSE_RESTARTING, CLOSE_EPOCH_CHANGED))


async def _watch(node: Node, seen: _Seen) -> None:
    """Read the epoch every WATCH_INTERVAL while the node has connections."""
    while len(node.consumers):
        await asyncio.sleep(WATCH_INTERVAL)
        try:
            epoch = await aepoch_current()
        except DatabaseError:
            continue  # nothing read before and the database unreachable: next time
        except Exception:
            logger.exception("stream epoch watch failed")
            continue
        _note(node, seen, epoch)
