"""The channel-layer messages of realtime: where each goes, and one constructor per type.

Every message sent through the channel layer is built here, and ``TopicHub.dispatch``
(``realtime.hub``), which receives them all, tells them apart by the same ``type``
constants. Five types:

* ``rt.event``: a stored event, to its topic's group (``realtime.broadcast``);
* ``rt.presence``: a topic's merged presence diff, to its group (``realtime.presence.diffs``);
* ``rt.recheck``: a booking or membership changed, to the topic's group
  (``realtime.signals``): its connections re-check their access;
* ``rt.user.revoked``: a user was deactivated or deleted, changed password, or signed
  out everywhere, to ``ACCESS_GROUP`` (``realtime.signals``, ``realtime.tokens``): their
  connections close with 4001;
* ``rt.user.recheck``: a user's own rights shrank (staff status removed, taken off a
  wedding's couple), to ``ACCESS_GROUP``: their connections re-check every topic (and
  take the fresh user for what follows, publishes included).

What the client receives (the frames) is ``realtime.protocol``'s: a message carries the
frame already encoded (``text``) where it has one.
"""

from __future__ import annotations

from typing import Any

EVENT = "rt.event"
PRESENCE = "rt.presence"
RECHECK = "rt.recheck"
USER_REVOKED = "rt.user.revoked"
USER_RECHECK = "rt.user.recheck"

# The group of notices about users (``user_revoked_message``); every hub joins it once.
# Such notices are rare (a deactivation), so every process getting each one costs
# nothing, where a group per user would cost a subscription per user.
ACCESS_GROUP = "rt.access"


def group_name(topic: str) -> str:
    """The channel-layer group of a topic: ``wedding:42`` → ``rt.wedding.42`` (no ':')."""
    return "rt." + str(topic).replace(":", ".")


def event_message(topic: str, seq: int, text: str, stored_at: float) -> dict[str, Any]:
    """A stored event: its frame ``text`` and when it was stored (for the delivery
    latency metric)."""
    return {"type": EVENT, "topic": topic, "seq": seq, "text": text, "stored_at": stored_at}


def presence_message(topic: str, text: str) -> dict[str, Any]:
    """A topic's presence diff, its frame ``text`` ready for the subscribers."""
    return {"type": PRESENCE, "topic": topic, "text": text}


def recheck_message(topic: str) -> dict[str, Any]:
    """Access to ``topic`` may have changed: its connections check theirs again."""
    return {"type": RECHECK, "topic": topic}


def user_revoked_message(user_id: int) -> dict[str, Any]:
    """The user may no longer connect: their connections close (sent to ACCESS_GROUP)."""
    return {"type": USER_REVOKED, "user_id": user_id}


def user_recheck_message(user_id: int) -> dict[str, Any]:
    """The user's rights shrank: their connections re-check all their topics (to
    ACCESS_GROUP)."""
    return {"type": USER_RECHECK, "user_id": user_id}
