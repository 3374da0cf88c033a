"""Celery tasks of the webhooks: thin, they call ``webhooks.services`` and schedule the
next run (at once when a batch stopped short, at the back-off when a topic waits)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import shared_task
from django.core.cache import cache

from webhooks import selectors
from webhooks.services import deliveries_prune, endpoint_deliver

logger = logging.getLogger(__name__)


def schedule(endpoint_id: int, *, at: dt.datetime | None = None) -> None:
    """Queue a delivery run of an endpoint, now or at ``at``; one per endpoint and time
    (kicks arriving while a topic waits do not pile up retries: each run returns the same
    stored ``retry_at``). The time is kept to the millisecond: two topics whose retries
    fall due within one second each get their run (a run at the first finds the second
    not yet due, and its retry must not be taken for a duplicate)."""
    if at is not None:
        key = f"webhooks:retry:{endpoint_id}:{round(at.timestamp() * 1000)}"
        if not cache.add(
            key, 1, timeout=max(60, int((at - dt.datetime.now(dt.UTC)).total_seconds()) + 60)
        ):
            return
        deliver_endpoint.apply_async(args=[endpoint_id], eta=at)
    else:
        deliver_endpoint.delay(endpoint_id)


@shared_task(name="webhooks.tasks.deliver_endpoint", ignore_result=True)
def deliver_endpoint(endpoint_id: int) -> dict[str, Any]:
    """Deliver an endpoint's pending events in seq order per topic (one run at a time)."""
    result = endpoint_deliver(endpoint_id=endpoint_id)
    if result.more:
        schedule(endpoint_id)
    elif result.retry_at is not None:
        schedule(endpoint_id, at=result.retry_at)
    return {
        "delivered": result.delivered,
        "dead": result.dead,
        "retry_at": result.retry_at.isoformat() if result.retry_at else None,
    }


@shared_task(name="webhooks.tasks.sweep", ignore_result=True)
def sweep() -> int:
    """Every ``WEBHOOKS_SWEEP_INTERVAL`` s (beat): a run of every active endpoint (what a
    lost kick or retry left), and delivered records past retention dropped."""
    ids = selectors.endpoint_ids_active()
    for endpoint_id in ids:
        schedule(endpoint_id)
    deleted = deliveries_prune()
    if deleted:
        logger.info("webhook deliveries pruned: %d", deleted)
    return len(ids)
