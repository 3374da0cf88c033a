"""Redis presence that degrades to this process's view while Redis is unreachable."""

from __future__ import annotations

from collections.abc import Iterable

from realtime.errors import RealtimeError

from .local import LocalPresence
from .redis import RedisPresence


class FallbackPresence:
    """Redis presence that degrades to this process's view while Redis is unreachable.

    Every join and leave is also applied to a local store, so during an outage
    ``members`` answers with the users connected to this process (a partial view, never
    an error). When Redis is back, the next refresh finds the entries it lost and the
    consumer re-joins them there.
    """

    def __init__(self, shared: RedisPresence, local: LocalPresence) -> None:
        self.shared, self.local = shared, local

    async def join(self, topic: str, conn_id: str, member: dict) -> bool:
        new_here = await self.local.join(topic, conn_id, member)
        try:
            return await self.shared.join(topic, conn_id, member)
        except RealtimeError:
            return new_here

    async def leave(self, topic: str, conn_id: str) -> dict | None:
        gone_here = await self.local.leave(topic, conn_id)
        try:
            return await self.shared.leave(topic, conn_id)
        except RealtimeError:
            return gone_here

    async def members(self, topic: str) -> list[dict]:
        try:
            return await self.shared.members(topic)
        except RealtimeError:
            return await self.local.members(topic)

    async def refresh(self, conn_id: str, topics: Iterable[str]) -> list[str]:
        topics = list(topics)
        await self.local.refresh(conn_id, topics)
        try:
            return await self.shared.refresh(conn_id, topics)
        except RealtimeError:
            return []

    async def refresh_many(self, entries: dict[str, list[str]]) -> dict[str, list[str]]:
        await self.local.refresh_many(entries)
        try:
            return await self.shared.refresh_many(entries)
        except RealtimeError:
            return {}
