"""Celery tasks of Web Push: thin, they call ``push.selectors`` and ``push.services``.

``fan_out`` turns one stored event into one ``send`` per browser of each member it is
for; ``send`` tries again on a 429, a 5xx or no answer, waiting
``WEB_PUSH_BACKOFF_BASE`` × 2^n seconds, up to ``WEB_PUSH_MAX_ATTEMPTS`` attempts."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings

from realtime.models import Event

from . import conf, selectors, services

logger = logging.getLogger(__name__)


def schedule_fan_out(event_id: int) -> None:
    """Queue the pushes of a stored event (called once its transaction commits)."""
    fan_out.delay(event_id)


@shared_task(name="push.tasks.fan_out", ignore_result=True)
def fan_out(event_id: int) -> int:
    """Queue one ``send`` per browser of each member the event is for; how many."""
    if not conf.enabled():
        return 0
    event = Event.objects.filter(pk=event_id).first()
    if event is None:
        return 0  # pruned already
    queued = 0
    for recipient in selectors.recipients(event):
        message = services.message_for(event, recipient.user)
        for subscription_id in recipient.subscription_ids:
            send.delay(subscription_id, message)
            queued += 1
    return queued


def backoff(retries: int) -> float:
    """Seconds before attempt ``retries + 2``: base, 2 base, 4 base ..."""
    return settings.WEB_PUSH_BACKOFF_BASE * 2**retries


@shared_task(name="push.tasks.send", bind=True, ignore_result=True)
def send(self: Any, subscription_id: int, message: dict[str, Any]) -> str:
    """Push one message to one browser (``services.push_send``), again later on a
    transient failure."""
    result = services.push_send(subscription_id=subscription_id, message=message)
    if result.outcome is services.Outcome.RETRY:
        attempt = self.request.retries + 1
        if attempt < settings.WEB_PUSH_MAX_ATTEMPTS:
            logger.info(
                "push to subscription %d failed (%s %s), attempt %d: retrying",
                subscription_id,
                result.status,
                result.detail,
                attempt,
            )
            raise self.retry(countdown=backoff(self.request.retries), max_retries=None)
        logger.warning(
            "push to subscription %d given up after %d attempts", subscription_id, attempt
        )
    elif result.outcome is services.Outcome.REFUSED:
        logger.warning(
            "push to subscription %d refused: %s %s", subscription_id, result.status, result.detail
        )
    return result.outcome.value
