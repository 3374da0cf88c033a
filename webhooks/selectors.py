"""Reads of the webhooks: which endpoints an event may go to, which topics have work."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.db.models import Max, Min, Q

from realtime.models import Event, TopicCursor
from webhooks.models import Endpoint, EndpointCursor, event_name_matches, topic_matches

# The active endpoints' filters, per process, for the hook on every stored event: a
# registered or changed endpoint is seen by other processes within this many seconds
# (the sweep delivers what a stale list missed).
ACTIVE_TTL = 5.0
_active: tuple[float, list[ActiveEndpoint]] = (0.0, [])


@dataclass(frozen=True)
class ActiveEndpoint:
    id: int
    topics: list[str]
    event_types: list[str]


def endpoints_active_forget() -> None:
    """Drop this process's list of active endpoints (after a change of one)."""
    global _active
    _active = (0.0, [])


def endpoints_active() -> list[ActiveEndpoint]:
    """The active endpoints and their filters, read at most every ``ACTIVE_TTL`` s."""
    global _active
    read_at, endpoints = _active
    if time.monotonic() - read_at < ACTIVE_TTL:
        return endpoints
    endpoints = [
        ActiveEndpoint(e.pk, e.topic_filter(), e.event_filter())
        for e in Endpoint.objects.filter(active=True)
    ]
    _active = (time.monotonic(), endpoints)
    return endpoints


def endpoint_ids_matching(topic: str, event: str) -> list[int]:
    """The active endpoints whose filters pass an event of this topic and name."""
    return [
        e.id
        for e in endpoints_active()
        if topic_matches(e.topics, topic) and event_name_matches(e.event_types, event)
    ]


def _topic_q(entries: list[str]) -> Q:
    q = Q()
    for entry in entries:
        q |= Q(topic__startswith=entry) if entry.endswith(":") else Q(topic=entry)
    return q


def _start_seq(endpoint: Endpoint, topic: str, last_seq: int) -> int:
    """Where an endpoint starts on a topic it has no cursor for: after the events stored
    before it was registered (within a topic, ids grow with seqs)."""
    events = Event.objects.filter(topic=topic).order_by()
    before = events.filter(id__lte=endpoint.since_event_id).aggregate(seq=Max("seq"))["seq"]
    if before is not None:
        return before
    after = events.filter(id__gt=endpoint.since_event_id).aggregate(seq=Min("seq"))["seq"]
    return after - 1 if after is not None else last_seq


def topics_pending(endpoint: Endpoint) -> list[EndpointCursor]:
    """The endpoint's cursors of the topics (passing its filter) with events past them,
    creating the cursor of a topic seen for the first time."""
    cursors = {c.topic: c for c in EndpointCursor.objects.filter(endpoint=endpoint)}
    topics = TopicCursor.objects.filter(_topic_q(endpoint.topic_filter())).order_by("topic")
    pending = []
    for topic, last_seq in topics.values_list("topic", "last_seq"):
        cursor = cursors.get(topic)
        if cursor is None:
            cursor, _ = EndpointCursor.objects.get_or_create(
                endpoint=endpoint,
                topic=topic,
                defaults={"last_seq": _start_seq(endpoint, topic, last_seq)},
            )
        if last_seq > cursor.last_seq:
            pending.append(cursor)
    return pending


def endpoint_ids_active() -> list[int]:
    """Every active endpoint's id (the sweep runs each)."""
    return list(Endpoint.objects.filter(active=True).values_list("pk", flat=True))
