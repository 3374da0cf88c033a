"""The hook on the event log: a stored event that is pushed (``selectors.wants_push``)
queues its fan-out once its transaction commits (``realtime.services.event_stored``).

A fan-out that cannot be queued (broker down) is logged: a push is a nudge to open the
page, where the event is anyway, so it is not swept up later.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from . import conf, selectors, tasks

logger = logging.getLogger(__name__)


def _queue(event_id: int) -> None:
    try:
        tasks.schedule_fan_out(event_id)
    except Exception:
        # Never let the broker break the publisher's other on-commit work (the broadcast).
        logger.warning("push fan-out of event %d not queued", event_id, exc_info=True)


def event_stored_push(sender: Any, event: Any, **kwargs: Any) -> None:
    """``event_stored`` receiver: after commit, queue the pushes of the event."""
    if conf.enabled() and selectors.wants_push(event):
        event_id = event.pk
        transaction.on_commit(lambda: _queue(event_id))
