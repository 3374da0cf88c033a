"""Writes of the webhooks: register an endpoint, deliver its events, replay and redeliver.

Delivery (ADR 0023): one run per endpoint at a time (a lease on its row, taken by a
conditional UPDATE: no transaction stays open across an HTTP call). A run walks the
endpoint's topics with events past its cursor and sends them one at a time in seq
order; an event goes out only once the one before it was answered with a 2xx. A failed
attempt is retried after an exponential back-off (``WEBHOOKS_BACKOFF_BASE`` doubled per
attempt, capped at ``WEBHOOKS_BACKOFF_MAX``); after ``WEBHOOKS_MAX_ATTEMPTS`` the delivery
is dead and its topic waits for that endpoint until staff replay it: order over progress.
"""

from __future__ import annotations

import datetime as dt
import http.client
import logging
import time
import uuid
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from realtime.models import Event
from realtime.protocol import event_frame
from realtime.topics import parse_topic
from webhooks import selectors, signing, transport
from webhooks.models import Delivery, Endpoint, EndpointCursor, event_name_matches

logger = logging.getLogger(__name__)

# A run goes round again while the kick flag was set during it, this many times at most
# (then the next kick or the sweep carries on).
MAX_ROUNDS = 5


def kick_key(endpoint_id: int) -> str:
    """The cache flag "events were stored for this endpoint since its run started"."""
    return f"webhooks:kick:{endpoint_id}"


@dataclass
class RunResult:
    """What a delivery run did, and when the endpoint needs the next one."""

    leased: bool = True
    delivered: int = 0
    dead: int = 0
    retry_at: dt.datetime | None = None  # the earliest back-off of a waiting topic
    more: bool = False  # stopped by WEBHOOKS_BATCH with events left

    def wait_until(self, at: dt.datetime) -> None:
        self.retry_at = at if self.retry_at is None else min(self.retry_at, at)


def backoff(attempts: int) -> dt.timedelta:
    """The wait after the ``attempts``-th failed attempt: base, 2 base, 4 base ... capped."""
    seconds = settings.WEBHOOKS_BACKOFF_BASE * 2 ** (attempts - 1)
    return dt.timedelta(seconds=min(seconds, settings.WEBHOOKS_BACKOFF_MAX))


def _lease_seconds() -> float:
    # Renewed before every attempt, so it outlives one attempt with a margin.
    return 3 * settings.WEBHOOKS_TIMEOUT + 30


def endpoint_register(
    *,
    name: str,
    url: str,
    secret: str = "",
    event_types: str = "",
    topics: str = "",
    active: bool = True,
) -> Endpoint:
    """Register an endpoint; it receives the matching events stored from now on.

    An empty ``secret`` generates one (``whsec_`` + base64). Raises ``ValidationError``
    naming the field, or ``ValueError`` for a secret that is not ``whsec_`` + base64.
    """
    try:
        transport.url_check(url)
    except transport.UrlRefused as exc:
        raise ValidationError({"url": str(exc)}) from exc
    secret = secret or signing.secret_generate()
    signing.secret_key(secret)
    with transaction.atomic():
        endpoint = Endpoint(
            name=name,
            url=url,
            secret=secret,
            event_types=event_types,
            topics=topics,
            active=active,
            since_event_id=Event.objects.aggregate(id=Max("id"))["id"] or 0,
        )
        endpoint.full_clean()
        endpoint.save()
    transaction.on_commit(selectors.endpoints_active_forget)
    return endpoint


def message_body(event: Event) -> str:
    """The JSON body of an event's message: Standard Webhooks' ``type``/``timestamp``/
    ``data``, the data being the protocol's event frame (PROTOCOL §6), and the topic and
    seq at the top for routing."""
    return orjson.dumps(
        {
            "type": event.event,
            "timestamp": event.created_at.astimezone(dt.UTC).isoformat(),
            "topic": event.topic,
            "seq": event.seq,
            "data": event_frame(event),
        }
    ).decode()


def _lease_take(endpoint_id: int, owner: str, now: dt.datetime) -> bool:
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=owner)
    until = now + dt.timedelta(seconds=_lease_seconds())
    taken = Endpoint.objects.filter(free, pk=endpoint_id, active=True).update(
        lease_until=until, lease_owner=owner
    )
    return taken == 1


def _lease_release(endpoint_id: int, owner: str) -> None:
    Endpoint.objects.filter(pk=endpoint_id, lease_owner=owner).update(
        lease_until=None, lease_owner=""
    )


def _attempt(endpoint: Endpoint, delivery: Delivery, now: dt.datetime) -> bool:
    """POST a delivery once and record the outcome; True when answered with a 2xx."""
    headers = signing.headers(endpoint.secret, delivery.message_id, int(time.time()), delivery.body)
    status: int | None = None
    try:
        response = transport.post(
            endpoint.url, delivery.body, headers, timeout=settings.WEBHOOKS_TIMEOUT
        )
        status = response.status
        error = "" if 200 <= status < 300 else f"HTTP {status}: {response.body[:200]}"
    except transport.UrlRefused as exc:
        error = f"refused: {exc}"
    except (OSError, http.client.HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    delivery.attempts += 1
    delivery.last_status_code = status
    delivery.last_error = error[:500]
    if not error:
        delivery.status = Delivery.Status.DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
    elif delivery.attempts >= settings.WEBHOOKS_MAX_ATTEMPTS:
        delivery.status = Delivery.Status.DEAD
        delivery.next_attempt_at = None
        logger.warning(
            "webhook delivery dead after %d attempts: endpoint %d %s#%d: %s",
            delivery.attempts,
            endpoint.pk,
            delivery.topic,
            delivery.seq,
            error,
        )
    else:
        delivery.status = Delivery.Status.FAILED
        delivery.next_attempt_at = now + backoff(delivery.attempts)
    delivery.save()
    return not error


def _delivery_for(endpoint: Endpoint, event: Event, now: dt.datetime) -> Delivery:
    delivery, _ = Delivery.objects.get_or_create(
        endpoint=endpoint,
        topic=event.topic,
        seq=event.seq,
        defaults={
            "event": event.event,
            "message_id": f"msg_{uuid.uuid4().hex}",
            "body": message_body(event),
            "created_at": now,
        },
    )
    return delivery


def _send(endpoint: Endpoint, delivery: Delivery, result: RunResult, now: dt.datetime) -> bool:
    """Send a delivery unless it is dead or waiting for its back-off; True when it is
    delivered (its topic goes on)."""
    if delivery.status == Delivery.Status.DELIVERED:
        return True
    if delivery.status == Delivery.Status.DEAD:
        return False
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
        result.wait_until(delivery.next_attempt_at)
        return False
    _lease_take(endpoint.pk, endpoint.lease_owner, timezone.now())  # renewed per attempt
    if _attempt(endpoint, delivery, now):
        result.delivered += 1
        return True
    if delivery.status == Delivery.Status.DEAD:
        result.dead += 1
    else:
        result.wait_until(delivery.next_attempt_at)
    return False


def _deliver_topic(
    endpoint: Endpoint, cursor: EndpointCursor, budget: int, result: RunResult, now: dt.datetime
) -> int:
    """Send a topic's events past the cursor in seq order until one is not delivered;
    returns the budget left. The cursor moves by a conditional UPDATE: a redelivery
    that moved it meanwhile stops this run on the topic."""
    types = endpoint.event_filter()
    done = cursor.last_seq

    def advance(seq: int) -> bool:
        nonlocal done
        moved = EndpointCursor.objects.filter(pk=cursor.pk, last_seq=cursor.last_seq).update(
            last_seq=seq
        )
        cursor.last_seq = done = seq
        return moved == 1

    events = Event.objects.filter(topic=cursor.topic, seq__gt=cursor.last_seq).order_by("seq")
    skipped = None
    for event in events[:budget]:
        budget -= 1
        if not event_name_matches(types, event.event):
            skipped = event.seq
            continue
        if skipped is not None:
            if not advance(skipped):
                return budget
            skipped = None
        if not _send(endpoint, _delivery_for(endpoint, event, now), result, now):
            return budget
        if not advance(event.seq):
            return budget
    if skipped is not None and skipped > done:
        advance(skipped)
    return budget


def _run_once(endpoint_id: int, owner: str, now: dt.datetime) -> RunResult:
    if not _lease_take(endpoint_id, owner, now):
        return RunResult(leased=False)
    try:
        # Cleared before reading: an event stored from here on sets it again.
        cache.delete(kick_key(endpoint_id))
        endpoint = Endpoint.objects.get(pk=endpoint_id)
        result = RunResult()
        budget = settings.WEBHOOKS_BATCH
        for cursor in selectors.topics_pending(endpoint):
            budget = _deliver_topic(endpoint, cursor, budget, result, now)
            if budget <= 0:
                result.more = True
                break
        return result
    finally:
        _lease_release(endpoint_id, owner)


def endpoint_deliver(*, endpoint_id: int, now: dt.datetime | None = None) -> RunResult:
    """Deliver an endpoint's pending events (a run; ``deliver_endpoint`` task). Does
    nothing (``leased=False``) while another run holds the endpoint or it is inactive."""
    owner = uuid.uuid4().hex
    total = RunResult()
    for _ in range(MAX_ROUNDS):
        result = _run_once(endpoint_id, owner, now or timezone.now())
        if not result.leased:
            return result if total.delivered == 0 and total.dead == 0 else total
        total.delivered += result.delivered
        total.dead += result.dead
        total.more = result.more
        if result.retry_at is not None:
            total.wait_until(result.retry_at)
        # Released first, then checked: an event whose kick met our lease is seen here.
        if result.more or not cache.get(kick_key(endpoint_id)):
            break
    return total


def deliveries_replay(*, deliveries: QuerySet[Delivery]) -> list[int]:
    """Make the dead deliveries of a queryset pending again (attempts from 0); their
    topics resume in order with them. Returns the endpoints to run."""
    dead = deliveries.filter(status=Delivery.Status.DEAD)
    endpoint_ids = sorted(set(dead.values_list("endpoint_id", flat=True)))
    count = dead.update(
        status=Delivery.Status.PENDING, attempts=0, next_attempt_at=None, last_status_code=None
    )
    logger.info("webhook deliveries replayed: %d (endpoints %s)", count, endpoint_ids)
    return endpoint_ids


def endpoint_redeliver(*, endpoint_id: int, topic: str, from_seq: int) -> int:
    """Deliver an endpoint's events of a topic again from ``from_seq`` on, in order (the
    messages keep their ``webhook-id``). Returns the number of deliveries made pending."""
    topic = str(parse_topic(topic))
    if isinstance(from_seq, bool) or not isinstance(from_seq, int) or from_seq < 1:
        raise ValueError("from_seq must be a positive integer")
    with transaction.atomic():
        endpoint = Endpoint.objects.select_for_update().get(pk=endpoint_id)
        EndpointCursor.objects.update_or_create(
            endpoint=endpoint, topic=topic, defaults={"last_seq": from_seq - 1}
        )
        count = Delivery.objects.filter(endpoint=endpoint, topic=topic, seq__gte=from_seq).update(
            status=Delivery.Status.PENDING,
            attempts=0,
            next_attempt_at=None,
            last_status_code=None,
            delivered_at=None,
        )
    logger.info("webhook endpoint %d: %s redelivered from seq %d", endpoint_id, topic, from_seq)
    return count


def deliveries_prune(*, now: dt.datetime | None = None) -> int:
    """Delete delivered records older than ``WEBHOOKS_RETENTION_DAYS`` (dead and waiting
    ones stay until they are delivered)."""
    cutoff = (now or timezone.now()) - dt.timedelta(days=settings.WEBHOOKS_RETENTION_DAYS)
    deleted, _ = Delivery.objects.filter(
        status=Delivery.Status.DELIVERED, delivered_at__lt=cutoff
    ).delete()
    return deleted
