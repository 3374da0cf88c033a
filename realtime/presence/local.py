"""Presence in this process's memory: the embedded default (one server process), and the
fallback's view while Redis is unreachable."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from .base import PRESENCE_TTL_S, by_user, user_id_of


class LocalPresence:
    """Presence in this process's memory: the embedded default (one server process)."""

    def __init__(
        self, *, ttl: float = PRESENCE_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        # topic -> conn_id -> (member, expires at); no awaits inside, so each call is atomic
        # on the event loop.
        self._topics: dict[str, dict[str, tuple[dict, float]]] = {}

    def _live(self, topic: str, now: float) -> dict[str, tuple[dict, float]]:
        conns = self._topics.get(topic)
        if conns is None:
            return {}
        for conn_id in [c for c, (_, expires) in conns.items() if expires <= now]:
            del conns[conn_id]
        if not conns:
            del self._topics[topic]
        return conns

    async def join(self, topic: str, conn_id: str, member: dict) -> bool:
        user_id = user_id_of(member)
        now = self._clock()
        conns = self._live(topic, now)
        present = any(m["user_id"] == user_id for m, _ in conns.values())
        self._topics.setdefault(topic, conns)[conn_id] = (dict(member), now + self.ttl)
        return not present

    async def leave(self, topic: str, conn_id: str) -> dict | None:
        conns = self._topics.get(topic)
        entry = conns.pop(conn_id, None) if conns is not None else None
        conns = self._live(topic, self._clock())
        if entry is None:
            return None
        member = entry[0]
        if any(m["user_id"] == member["user_id"] for m, _ in conns.values()):
            return None
        return dict(member)

    async def members(self, topic: str) -> list[dict]:
        conns = self._live(topic, self._clock())
        return by_user(dict(m) for m, _ in conns.values())

    async def refresh(self, conn_id: str, topics: Iterable[str]) -> list[str]:
        expires = self._clock() + self.ttl
        lost = []
        for topic in topics:
            conns = self._topics.get(topic)
            entry = conns.get(conn_id) if conns is not None else None
            if entry is None:
                lost.append(topic)
            else:
                conns[conn_id] = (entry[0], expires)
        return lost

    async def refresh_many(self, entries: dict[str, list[str]]) -> dict[str, list[str]]:
        lost = {conn_id: await self.refresh(conn_id, topics) for conn_id, topics in entries.items()}
        return {conn_id: topics for conn_id, topics in lost.items() if topics}
