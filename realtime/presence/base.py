"""What every presence store does (``PresenceStore``), and how long an entry lives."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

# An entry lives this long after its last join/refresh; the consumer refreshes every
# PRESENCE_REFRESH_S, so two refreshes can be missed (a GC pause, a slow Redis) before a
# live user flickers out, and a crashed process's users are gone within a minute.
PRESENCE_TTL_S = 60
PRESENCE_REFRESH_S = 20


@runtime_checkable
class PresenceStore(Protocol):
    """The presence interface of the design doc; member: {"user_id", "name", "supplier_id"}."""

    async def join(self, topic: str, conn_id: str, member: dict) -> bool:
        """Record a connection on a topic; True if its user is newly present there."""
        ...

    async def leave(self, topic: str, conn_id: str) -> dict | None:
        """Remove a connection; its member if the user is no longer present at all."""
        ...

    async def members(self, topic: str) -> list[dict]:
        """The users present on a topic now, one entry per user_id, ordered by user_id."""
        ...

    async def refresh(self, conn_id: str, topics: Iterable[str]) -> list[str]:
        """Heartbeat: extend a connection's entries; returns the topics it had vanished from.

        The consumer re-joins those (its entries expired during a stall, or Redis lost them).
        """
        ...

    async def refresh_many(self, entries: dict[str, list[str]]) -> dict[str, list[str]]:
        """``refresh`` of many connections (``{conn_id: topics}``) at once: the sweep's
        heartbeat of the whole process. Returns ``{conn_id: lost topics}`` of those with any."""
        ...


def user_id_of(member: dict) -> int:
    """A member's user_id; ValueError unless it is an integer."""
    user_id = member.get("user_id")
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise ValueError(f"a presence member needs an integer user_id, not {user_id!r}")
    return user_id


def by_user(members: Iterable[dict]) -> list[dict]:
    """One member per user_id (the first seen), ordered by user_id."""
    unique: dict[int, dict] = {}
    for member in members:
        unique.setdefault(member["user_id"], member)
    return [unique[user_id] for user_id in sorted(unique)]
