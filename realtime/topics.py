"""Topic strings (PROTOCOL §3): parse them, and decide who may subscribe and publish.

``wedding:<id>`` is for the couple, staff and the users of suppliers with an active
booking; ``supplier:<id>`` for that supplier's users and staff; ``ops`` for staff. A
topic naming a row that does not exist gets the very same ``forbidden`` error as one
the user may not see, so nothing about hidden rows leaks. Each check costs at most
three queries (most cost one); a subscribe check served from the cached access costs
none (one for staff on a wedding or supplier topic).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from realtime import catalogue
from realtime.errors import RealtimeError, role_forbidden, topic_forbidden
from weddings import roles
from weddings import selectors as wedsync_selectors
from weddings.caching import user_access
from weddings.models import Supplier, Wedding

TopicKind = Literal["wedding", "supplier", "ops"]

# Ids are database keys: positive, no sign, no leading zero, no whitespace, ASCII digits
# only, and small enough for a signed 64-bit column (19 digits at most).
_TOPIC_RE = re.compile(r"(wedding|supplier):([1-9][0-9]{0,18})|ops")
MAX_ID = 2**63 - 1
MAX_TOPIC_LENGTH = 100


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic; ``str(topic)`` gives back its canonical string."""

    kind: TopicKind
    id: int | None = None

    def __str__(self) -> str:
        return self.kind if self.id is None else f"{self.kind}:{self.id}"

    @property
    def name(self) -> str:
        return str(self)


def parse_topic(value: Any) -> Topic:
    """Parse a topic string; anything outside PROTOCOL §3 raises ``unknown_topic``."""
    if isinstance(value, Topic):
        return value
    if not isinstance(value, str) or len(value) > MAX_TOPIC_LENGTH:
        raise RealtimeError("unknown_topic", "not a topic (wedding:<id>, supplier:<id> or ops)")
    match = _TOPIC_RE.fullmatch(value)
    if match is None or (match.group(2) is not None and int(match.group(2)) > MAX_ID):
        raise RealtimeError("unknown_topic", f"unknown topic {value!r}")
    if value == "ops":
        return Topic("ops")
    return Topic(match.group(1), int(match.group(2)))  # type: ignore[arg-type]


def _may_subscribe(user: Any, topic: Topic) -> bool:
    if not wedsync_selectors.is_active_user(user):
        return False
    if topic.kind == "wedding":
        # Staff included: the selector answers False for a wedding that does not exist.
        return wedsync_selectors.user_can_view_wedding(user, topic.id)
    if topic.kind == "supplier":
        if user.is_staff:
            return Supplier.objects.filter(pk=topic.id).exists()
        return topic.id in wedsync_selectors.user_supplier_ids(user)
    return bool(user.is_staff)  # ops


def _may_subscribe_cached(user: Any, topic: Topic) -> bool:
    """``_may_subscribe`` from the user's cached access (``weddings.caching.user_access``).

    Both the user object and the cached row must say active (and staff): the object may
    be one the caller just changed, the cache follows the database.
    """
    if not wedsync_selectors.is_active_user(user):
        return False
    access = user_access(user.pk)
    if not access["active"]:
        return False
    staff = bool(user.is_staff and access["staff"])
    if topic.kind == "wedding":
        if staff:  # whether it exists: staff are few, a cached "no" would hide new ones
            return Wedding.objects.filter(pk=topic.id).exists()
        return topic.id in access["weddings"]
    if topic.kind == "supplier":
        if staff:
            return Supplier.objects.filter(pk=topic.id).exists()
        return topic.id in access["suppliers"]
    return staff  # ops


def authorize_subscribe(user: Any, topic: str | Topic, *, cached: bool = True) -> Topic:
    """Check that ``user`` may join ``topic``; raise ``unknown_topic`` or ``forbidden``.

    Subscribes and presence requests use the cached access (``cached=True``, read on
    every subscribe). Checks guarding a write (ack) and the re-check of live
    subscriptions after an access change pass ``cached=False`` and read the database.
    """
    parsed = parse_topic(topic)
    allowed = _may_subscribe_cached if cached else _may_subscribe
    if not allowed(user, parsed):
        raise topic_forbidden(str(parsed))
    return parsed


def authorize_publish(user: Any, topic: str | Topic, event: str) -> Topic:
    """Check that ``user`` may publish ``event`` on ``topic``: the matrix's row
    ``publish.<event>`` (``weddings.roles``; PROTOCOL §5).

    Always against the database, never the cache: authorising a write must be exact.

    Clients publish on wedding topics only; ``supplier:`` and ``ops`` carry server
    events (``services.event_publish_system``). Raises ``unknown_topic``/``forbidden``
    for the topic, ``invalid_payload`` (field ``event``) for an event outside the
    catalogue and ``forbidden`` when the user's role may not publish that event. A rule
    that depends on the payload (``vendor.status``) is checked by the catalogue.
    """
    return publish_access(user, topic, event)[0]


def publish_access(
    user: Any, topic: str | Topic, event: str
) -> tuple[Topic, wedsync_selectors.WeddingAccess]:
    """``authorize_publish``, also returning what it read: the user's acting suppliers
    on the wedding, which the publish needs next (one database round trip for both)."""
    parsed = parse_topic(topic)
    if parsed.kind != "wedding" or not wedsync_selectors.is_active_user(user):
        raise topic_forbidden(str(parsed))
    access = wedsync_selectors.user_wedding_access(user, parsed.id)
    if not access.visible:
        raise topic_forbidden(str(parsed))
    catalogue.spec_for(event)  # invalid_payload (field ``event``) outside the catalogue
    allowed = roles.may(
        f"publish.{event}",
        staff=bool(user.is_staff),
        acting=bool(access.acting_supplier_ids),
        editor=lambda: wedsync_selectors.user_can_edit_timeline(user, parsed.id),
    )
    if not allowed:
        raise role_forbidden(f"you may not publish {event!r} on this wedding")
    return parsed, access
