"""Presence stores (realtime/presence/): one contract, run against both implementations."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from django.test import override_settings

from core.breaker import redis_breaker
from realtime.errors import RealtimeError
from realtime.presence import (
    FallbackPresence,
    LocalPresence,
    PresenceStore,
    RedisPresence,
    get_presence_store,
    get_redis,
)

TOPIC = "wedding:42"
ANN = {"user_id": 7, "name": "Ann", "supplier_id": 3}
BEN = {"user_id": 8, "name": "Ben", "supplier_id": None}
# A tiny TTL for the expiry tests; the margins around it are 0.2 s either way.
SHORT_TTL = 0.6


class PresenceContract:
    """The behaviour every PresenceStore has; subclasses provide ``make_store``."""

    def make_store(self, *, ttl: float = 60) -> PresenceStore:
        raise NotImplementedError

    def test_is_a_presence_store(self) -> None:
        assert isinstance(self.make_store(), PresenceStore)

    async def test_members__empty_topic__none(self) -> None:
        assert await self.make_store().members(TOPIC) == []

    async def test_join__new_user__reported_once(self) -> None:
        store = self.make_store()

        assert await store.join(TOPIC, "c1", ANN) is True
        assert await store.join(TOPIC, "c2", ANN) is False
        assert await store.join(TOPIC, "c1", ANN) is False
        assert await store.join(TOPIC, "c3", BEN) is True

    async def test_members__two_connections_of_one_user__one_member(self) -> None:
        store = self.make_store()
        await store.join(TOPIC, "c1", ANN)
        await store.join(TOPIC, "c2", ANN)
        await store.join(TOPIC, "c3", BEN)

        assert await store.members(TOPIC) == [ANN, BEN]

    async def test_members__topics_are_separate(self) -> None:
        store = self.make_store()
        await store.join(TOPIC, "c1", ANN)
        await store.join("wedding:43", "c1", BEN)

        assert await store.members(TOPIC) == [ANN]
        assert await store.members("wedding:43") == [BEN]
        assert await store.members("wedding:44") == []

    async def test_leave__one_of_two_connections__user_stays(self) -> None:
        # given
        store = self.make_store()
        await store.join(TOPIC, "c1", ANN)
        await store.join(TOPIC, "c2", ANN)

        # when
        left = await store.leave(TOPIC, "c1")

        # then
        assert left is None
        assert await store.members(TOPIC) == [ANN]

    async def test_leave__last_connection__user_gone(self) -> None:
        # given
        store = self.make_store()
        await store.join(TOPIC, "c1", ANN)
        await store.join(TOPIC, "c2", ANN)
        await store.join(TOPIC, "c3", BEN)
        await store.leave(TOPIC, "c1")

        # when
        left = await store.leave(TOPIC, "c2")

        # then
        assert left == ANN
        assert await store.members(TOPIC) == [BEN]

    async def test_leave__unknown_connection__nothing(self) -> None:
        store = self.make_store()
        await store.join(TOPIC, "c1", ANN)

        assert await store.leave(TOPIC, "nope") is None
        assert await store.leave("wedding:99", "c1") is None
        assert await store.leave(TOPIC, "c1") == ANN
        assert await store.leave(TOPIC, "c1") is None

    async def test_join_after_full_leave__new_again(self) -> None:
        store = self.make_store()
        await store.join(TOPIC, "c1", ANN)
        await store.leave(TOPIC, "c1")

        assert await store.join(TOPIC, "c2", ANN) is True

    async def test_concurrent_joins__user_reported_new_exactly_once(self) -> None:
        store = self.make_store()

        results = await asyncio.gather(*(store.join(TOPIC, f"c{i}", ANN) for i in range(20)))

        assert results.count(True) == 1

    async def test_expiry__unrefreshed_connection_disappears(self) -> None:
        # given
        store = self.make_store(ttl=SHORT_TTL)
        await store.join(TOPIC, "c1", ANN)
        await store.join(TOPIC, "c2", BEN)

        # when: c2 refreshes half-way, c1 does not
        await asyncio.sleep(SHORT_TTL - 0.2)
        assert await store.refresh("c2", [TOPIC]) == []
        await asyncio.sleep(0.4)

        # then: c1 is past its TTL, c2 has 0.2 s left
        assert await store.members(TOPIC) == [BEN]

    async def test_expiry__user_with_an_expired_connection_joins_as_new(self) -> None:
        store = self.make_store(ttl=0.2)
        await store.join(TOPIC, "c1", ANN)
        await asyncio.sleep(0.4)

        assert await store.join(TOPIC, "c2", ANN) is True

    async def test_expiry__leave_of_the_live_connection_reports_the_user_gone(self) -> None:
        # given: Ann's phone expired, her laptop is live
        store = self.make_store(ttl=SHORT_TTL)
        await store.join(TOPIC, "phone", ANN)
        await asyncio.sleep(SHORT_TTL - 0.2)
        await store.join(TOPIC, "laptop", ANN)
        await asyncio.sleep(0.4)

        # when/then: the laptop leaving is Ann leaving
        assert await store.leave(TOPIC, "laptop") == ANN

    async def test_refresh__returns_topics_the_connection_is_not_on(self) -> None:
        store = self.make_store(ttl=0.2)
        await store.join(TOPIC, "c1", ANN)
        await store.join("wedding:43", "c1", ANN)

        assert await store.refresh("c1", [TOPIC, "wedding:43", "wedding:44"]) == ["wedding:44"]
        assert await store.refresh("c1", []) == []
        await asyncio.sleep(0.4)
        assert await store.members(TOPIC) == []
        assert await store.refresh("c1", [TOPIC]) == [TOPIC]

    async def test_refresh_many__keeps_every_connection_and_reports_the_lost(self) -> None:
        # given two connections, one on two topics, and a third that expired
        store = self.make_store(ttl=0.6)
        await store.join(TOPIC, "c1", ANN)
        await store.join("wedding:43", "c1", ANN)
        await store.join(TOPIC, "c2", BEN)
        await store.join("wedding:43", "c3", BEN)
        await asyncio.sleep(0.4)
        # when the process refreshes them all at once (c3 is not refreshed)
        lost = await store.refresh_many(
            {"c1": [TOPIC, "wedding:43"], "c2": [TOPIC, "wedding:44"], "c4": [TOPIC]}
        )
        # then only what was never there is lost, and the refreshed entries outlive c3's
        assert lost == {"c2": ["wedding:44"], "c4": [TOPIC]}
        assert await store.refresh_many({}) == {}
        await asyncio.sleep(0.3)
        assert await store.members(TOPIC) == [ANN, BEN]
        assert await store.members("wedding:43") == [ANN]

    async def test_join__refuses_a_member_without_an_integer_user_id(self) -> None:
        store = self.make_store()

        with pytest.raises(ValueError):
            await store.join(TOPIC, "c1", {"user_id": "7", "name": "Ann"})


class TestLocalPresence(PresenceContract):
    def make_store(self, *, ttl: float = 60) -> PresenceStore:
        return LocalPresence(ttl=ttl)

    async def test_join__copies_the_member(self) -> None:
        store = self.make_store()
        member = dict(ANN)
        await store.join(TOPIC, "c1", member)

        member["name"] = "changed"
        (stored,) = await store.members(TOPIC)
        stored["name"] = "changed too"

        assert await store.members(TOPIC) == [ANN]


@pytest.mark.redis
class TestRedisPresence(PresenceContract):
    @pytest.fixture(autouse=True)
    def _own_keys(self, redis_url: str, redis_key_prefix: str) -> None:
        self.url, self.prefix = redis_url, redis_key_prefix

    def make_store(self, *, ttl: float = 60, url: str | None = None) -> RedisPresence:
        return RedisPresence(url or self.url, ttl=ttl, key_prefix=self.prefix)

    def _redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    async def test_two_processes__see_the_same_members(self) -> None:
        # given: two stores with clients of their own (client_name makes a separate pool)
        here = self.make_store()
        there = self.make_store(url=f"{self.url}?client_name=other-process")
        assert get_redis(here.url) is not get_redis(there.url)

        # when
        assert await here.join(TOPIC, "c1", ANN) is True
        assert await there.join(TOPIC, "c2", ANN) is False
        await there.join(TOPIC, "c3", BEN)

        # then
        assert await here.members(TOPIC) == [ANN, BEN]
        assert await there.members(TOPIC) == [ANN, BEN]
        assert await here.leave(TOPIC, "c1") is None
        assert await there.leave(TOPIC, "c2") == ANN
        assert await here.members(TOPIC) == [BEN]

    async def test_keys__named_per_topic_with_a_ttl(self) -> None:
        store = self.make_store(ttl=30)
        await store.join(TOPIC, "c1", ANN)

        client = self._redis()
        try:
            hash_key, exp_key = (
                f"{self.prefix}:presence:{TOPIC}",
                f"{self.prefix}:presence:{TOPIC}:exp",
            )
            assert store.keys(TOPIC) == (hash_key, exp_key)
            assert client.hkeys(hash_key) == [b"c1"]
            assert client.zrange(exp_key, 0, -1) == [b"c1"]
            assert 0 < client.pttl(hash_key) <= 30_000
            assert 0 < client.pttl(exp_key) <= 30_000
        finally:
            client.close()

    async def test_keys__last_leave_removes_them(self) -> None:
        store = self.make_store()
        await store.join(TOPIC, "c1", ANN)
        await store.leave(TOPIC, "c1")

        client = self._redis()
        try:
            assert client.exists(*store.keys(TOPIC)) == 0
        finally:
            client.close()

    async def test_keys__expired_entries_are_purged_from_both(self) -> None:
        # given: c1 expired, c2 live
        store = self.make_store(ttl=SHORT_TTL)
        await store.join(TOPIC, "c1", ANN)
        await asyncio.sleep(SHORT_TTL - 0.2)
        await store.join(TOPIC, "c2", BEN)
        await asyncio.sleep(0.4)

        # when
        await store.members(TOPIC)

        # then
        client = self._redis()
        try:
            hash_key, exp_key = store.keys(TOPIC)
            assert client.hkeys(hash_key) == [b"c2"]
            assert client.zrange(exp_key, 0, -1) == [b"c2"]
        finally:
            client.close()

    async def test_script_cache_flushed__scripts_are_loaded_again(self) -> None:
        store = self.make_store()
        await store.join(TOPIC, "c1", ANN)
        await get_redis(self.url).script_flush()

        assert await store.members(TOPIC) == [ANN]


# --- failures and wiring ------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.join(TOPIC, "c1", ANN),
        lambda s: s.leave(TOPIC, "c1"),
        lambda s: s.members(TOPIC),
        lambda s: s.refresh("c1", [TOPIC]),
    ],
    ids=["join", "leave", "members", "refresh"],
)
async def test_redis_presence__redis_unreachable__unavailable(call) -> None:
    store = RedisPresence("redis://127.0.0.1:1/0")

    with pytest.raises(RealtimeError) as info:
        await asyncio.wait_for(call(store), timeout=5)

    assert info.value.code == "unavailable"


def test_get_redis__one_client_per_event_loop() -> None:
    url = "redis://127.0.0.1:1/0"  # nothing is sent: making a client does not connect

    async def twice() -> tuple:
        return get_redis(url), get_redis(url)

    first_a, first_b = asyncio.run(twice())
    second, _ = asyncio.run(twice())

    assert first_a is first_b
    assert second is not first_a


@override_settings(REDIS_URL="")
def test_get_presence_store__embedded__one_local_store() -> None:
    store = get_presence_store()

    assert isinstance(store, LocalPresence)
    assert get_presence_store() is store


@override_settings(REDIS_URL="redis://127.0.0.1:6379/7")
def test_get_presence_store__redis_url__redis_store_with_local_fallback() -> None:
    store = get_presence_store()

    assert isinstance(store, FallbackPresence)
    assert isinstance(store.shared, RedisPresence)
    assert store.shared.url == "redis://127.0.0.1:6379/7"
    assert get_presence_store() is store


async def test_fallback_presence__redis_unreachable__answers_with_this_process() -> None:
    store = FallbackPresence(RedisPresence("redis://127.0.0.1:1/0"), LocalPresence())

    joined = await asyncio.wait_for(store.join(TOPIC, "c1", ANN), timeout=10)
    members = await store.members(TOPIC)
    lost = await store.refresh("c1", [TOPIC])
    left = await store.leave(TOPIC, "c1")

    assert joined is True
    assert members == [ANN]
    assert lost == []  # nothing to re-join while Redis cannot be asked
    assert left == ANN
    assert await store.members(TOPIC) == []


async def test_fallback_presence__redis_unreachable__breaker_opens_and_fails_fast() -> None:
    store = FallbackPresence(RedisPresence("redis://127.0.0.1:1/0"), LocalPresence())
    for _ in range(5):
        await store.members(TOPIC)

    assert redis_breaker("presence").state == "open"


@pytest.mark.redis
async def test_fallback_presence__redis_up__shared_view(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    one = FallbackPresence(RedisPresence(redis_url, key_prefix=prefix), LocalPresence())
    two = FallbackPresence(RedisPresence(redis_url, key_prefix=prefix), LocalPresence())

    await one.join(TOPIC, "c1", ANN)

    assert await two.members(TOPIC) == [ANN]
    assert await two.join(TOPIC, "c2", ANN) is False  # the same user, seen through Redis


# --- the diffs a process sends ------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list, list]]:
    """The diffs the batcher sends, instead of sending them."""
    from realtime.presence import diffs as presence

    diffs: list[tuple[str, list, list]] = []

    async def record(topic: str, joins: list, leaves: list) -> None:
        diffs.append((topic, joins, leaves))

    monkeypatch.setattr(presence, "_send_diff", record)
    monkeypatch.setattr(presence, "PRESENCE_BATCH_S", 0.05)
    return diffs


async def test_diff_batcher__changes_of_a_topic_within_the_window__one_diff(sent) -> None:
    from realtime.presence import DiffBatcher

    # given joins and leaves on two topics within one batch
    batcher = DiffBatcher()
    batcher.add(TOPIC, [ANN], [])
    batcher.add(TOPIC, [BEN], [])
    batcher.add("wedding:43", [], [ANN])
    assert sent == []
    # when the batch time has passed
    await asyncio.sleep(0.2)
    # then one diff per topic went out, with every change
    assert sorted(sent) == [("wedding:42", [ANN, BEN], []), ("wedding:43", [], [ANN])]


async def test_diff_batcher__left_and_back_within_the_window__the_last_change_wins(sent) -> None:
    from realtime.presence import DiffBatcher

    batcher = DiffBatcher()
    batcher.add(TOPIC, [], [ANN])  # a reconnect: the old connection leaves ...
    batcher.add(TOPIC, [ANN], [])  # ... and the new one joins
    batcher.add(TOPIC, [BEN], [])
    batcher.add(TOPIC, [], [BEN])
    await asyncio.sleep(0.2)
    assert sent == [(TOPIC, [ANN], [BEN])]


async def test_diff_batcher__drain_sends_at_once(sent) -> None:
    from realtime.presence import DiffBatcher

    batcher = DiffBatcher()
    batcher.add(TOPIC, [], [ANN])
    await batcher.drain()
    assert sent == [(TOPIC, [], [ANN])]
    await asyncio.sleep(0.1)
    assert len(sent) == 1  # the timer was cancelled
