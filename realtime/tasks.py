"""Celery tasks of the event log: thin, they only call ``realtime.services``."""

from __future__ import annotations

import logging

from celery import shared_task

from realtime.services import events_prune

logger = logging.getLogger(__name__)


@shared_task(name="realtime.tasks.prune_event_log", ignore_result=True)
def prune_event_log() -> int:
    """Hourly (beat): drop events past retention and expired idempotency keys."""
    deleted = events_prune()
    logger.info("prune_event_log deleted %d events", deleted)
    return deleted
