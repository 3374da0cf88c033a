"""The hook on the event log: a stored event kicks a delivery run of each active
endpoint it matches, once its transaction commits (``realtime.services.event_stored``).

Kicks are coalesced: a cache flag per endpoint (``services.kick_key``) is set by the
first event and cleared by the run when it starts, so a burst queues one task, not one
per event. A kick that cannot be queued (broker down) is logged and left to the sweep.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.core.cache import cache
from django.db import transaction

from webhooks import selectors, tasks
from webhooks.services import kick_key

logger = logging.getLogger(__name__)

# Seconds a kick flag lives when no run clears it (a lost task, or the embedded default,
# whose per-process cache the worker's run cannot clear): then events kick again.
KICK_TTL = 5


def kick(endpoint_ids: list[int]) -> None:
    """Queue a delivery run of each endpoint not already kicked."""
    for endpoint_id in endpoint_ids:
        try:
            if cache.add(kick_key(endpoint_id), 1, timeout=KICK_TTL):
                tasks.schedule(endpoint_id)
        except Exception:
            # Never let a broker or cache failure break the publisher's other on-commit
            # work (the broadcast): the sweep delivers these events.
            logger.warning("webhook kick of endpoint %d failed", endpoint_id, exc_info=True)


def event_stored_kick(sender: Any, event: Any, **kwargs: Any) -> None:
    """``event_stored`` receiver: after commit, kick the endpoints the event matches."""
    endpoint_ids = selectors.endpoint_ids_matching(event.topic, event.event)
    if endpoint_ids:
        transaction.on_commit(partial(kick, endpoint_ids))
