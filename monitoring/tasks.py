"""Celery tasks of monitoring: thin, they only call ``monitoring.services``."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.utils import timezone

from . import selectors, services

logger = logging.getLogger(__name__)


@shared_task(name="monitoring.tasks.record_snapshot", ignore_result=True)
def record_snapshot() -> dict[str, Any]:
    """Every minute (beat): store the snapshot, evaluate the alert rules, chase overdue
    acknowledgements, escalate, and prune history past retention."""
    now = timezone.now()
    previous = selectors.latest_snapshot()
    gap = (now - previous.taken_at).total_seconds() if previous else None
    snapshot = services.snapshot_record(now=now)
    changes = services.alerts_evaluate(snapshot=snapshot, beat_gap_s=gap, now=now)
    acks = services.acks_check(now=now)
    escalated = services.alerts_escalate(now=now)
    pruned = services.snapshots_prune(now=now)
    return {
        "snapshot": snapshot.pk,
        "alerts": {k: v for k, v in changes.items() if v},
        "acks": {k: v for k, v in acks.items() if v},
        "escalated": [a.pk for a in escalated],
        "pruned": pruned,
    }


@shared_task(name="monitoring.tasks.publish_live", ignore_result=True)
def publish_live() -> int:
    """Every MONITORING_LIVE_INTERVAL seconds (beat): the live figures on ``ops``."""
    return services.live_publish().seq
