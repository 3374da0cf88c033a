"""Who is on a topic now (PROTOCOL §4 presence, §6 presence_diff).

A connection joins the topics it subscribes to and leaves them when it unsubscribes or
disconnects; the consumer refreshes its entries every ``PRESENCE_REFRESH_S``. An entry not
refreshed for ``PRESENCE_TTL_S`` expires, so the users of a crashed process vanish within a
minute. Presence is per *user*: ``join`` says whether the user is newly present and ``leave``
whether the user has gone (their last connection left); a user with a phone and a laptop is
one member. Expired entries are dropped lazily, by the next call on their topic; no diff is
sent for them.

Two stores behind one interface (``base.PresenceStore``): ``RedisPresence`` (``redis``,
shared by every server process) and ``LocalPresence`` (``local``, one process, the embedded
default). ``get_presence_store()`` picks by ``settings.REDIS_URL``. The Redis store's
failures (and its open breaker) surface as ``RealtimeError("unavailable")``;
``FallbackPresence`` (``fallback``), what ``get_presence_store()`` returns with Redis, then
answers from this process's own view. The diffs a process sends are merged by a
``DiffBatcher`` (``diffs``).
"""

from __future__ import annotations

from django.conf import settings

from core.redis import shared_client as get_redis

from .base import PRESENCE_REFRESH_S, PRESENCE_TTL_S, PresenceStore
from .diffs import PRESENCE_BATCH_S, DiffBatcher
from .fallback import FallbackPresence
from .local import LocalPresence
from .redis import REFRESH_CHUNK, RedisPresence

__all__ = [
    "PRESENCE_BATCH_S",
    "PRESENCE_REFRESH_S",
    "PRESENCE_TTL_S",
    "REFRESH_CHUNK",
    "DiffBatcher",
    "FallbackPresence",
    "LocalPresence",
    "PresenceStore",
    "RedisPresence",
    "get_presence_store",
    "get_redis",
]

_local_store: LocalPresence | None = None
_redis_stores: dict[tuple[str, str], FallbackPresence] = {}


def get_presence_store() -> PresenceStore:
    """The process's presence store: Redis (with the local fallback) when
    settings.REDIS_URL, else in-process."""
    global _local_store
    url = settings.REDIS_URL
    if url:
        # Keys under CACHE_NAMESPACE: deployments (and test runs) sharing a Redis keep apart.
        prefix = settings.CACHE_NAMESPACE
        store = _redis_stores.get((url, prefix))
        if store is None:
            store = _redis_stores[(url, prefix)] = FallbackPresence(
                RedisPresence(url, key_prefix=prefix), LocalPresence()
            )
        return store
    if _local_store is None:
        _local_store = LocalPresence()
    return _local_store
