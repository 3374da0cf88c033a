"""The connection registry: limits per user and supplier, expiry, heartbeats, counts."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
import redis
from django.test import override_settings

from realtime.connection_counts import (
    Connection,
    ConnectionCounter,
    LocalCounts,
    RedisCounts,
    supplier_limit,
)
from scaling.services import wedding_day_mode_set
from tests.factories import make_booking, make_supplier, make_user, make_wedding


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def conn(user: int, *suppliers: int, weddings: tuple[int, ...] = ()) -> Connection:
    return Connection(uuid.uuid4().hex, user, tuple(suppliers), set(weddings))


class RegistryContract:
    """What both stores must do; subclasses say how to make one and how to age it."""

    def make_store(self): ...

    async def expire(self, store) -> None: ...

    async def test_register__under_the_limits__counted_everywhere(self) -> None:
        store = self.make_store()
        one = conn(1, 10, 11, weddings=(5,))

        refused = await store.register(one, user_limit=2, supplier_limit=2, ttl=30)

        assert refused is None
        assert await store.counts("user", [1]) == {1: 1}
        assert await store.counts("supplier", [10, 11, 12]) == {10: 1, 11: 1, 12: 0}
        assert await store.counts("wedding", [5]) == {5: 1}

    async def test_register__user_limit__refused_and_not_counted(self) -> None:
        store = self.make_store()
        for _ in range(2):
            assert await store.register(conn(1, 10), user_limit=2, supplier_limit=9, ttl=30) is None

        refused = await store.register(conn(1, 10), user_limit=2, supplier_limit=9, ttl=30)

        assert (refused.kind, refused.id, refused.limit) == ("user", 1, 2)
        assert "2 connections per user" in refused.reason
        assert await store.counts("supplier", [10]) == {10: 2}

    async def test_register__supplier_limit_across_users__refused(self) -> None:
        store = self.make_store()
        await store.register(conn(1, 10), user_limit=5, supplier_limit=2, ttl=30)
        await store.register(conn(2, 11, 10), user_limit=5, supplier_limit=2, ttl=30)

        refused = await store.register(conn(3, 11, 10), user_limit=5, supplier_limit=2, ttl=30)

        assert (refused.kind, refused.id) == ("supplier", 10)
        assert await store.counts("supplier", [10, 11]) == {10: 2, 11: 1}  # 11 not taken
        assert await store.counts("user", [3]) == {3: 0}

    async def test_unregister__frees_the_slot(self) -> None:
        store = self.make_store()
        first = conn(1, 10)
        await store.register(first, user_limit=1, supplier_limit=1, ttl=30)

        await store.unregister(first)

        assert await store.register(conn(1, 10), user_limit=1, supplier_limit=1, ttl=30) is None

    async def test_no_heartbeat__entries_expire(self) -> None:
        store = self.make_store()
        await store.register(conn(1, 10), user_limit=1, supplier_limit=1, ttl=0.2)

        await self.expire(store)

        assert await store.counts("supplier", [10]) == {10: 0}
        assert await store.register(conn(1, 10), user_limit=1, supplier_limit=1, ttl=30) is None

    async def test_heartbeat__keeps_entries_alive(self) -> None:
        store = self.make_store()
        one = conn(1, 10)
        await store.register(one, user_limit=1, supplier_limit=1, ttl=0.2)

        await store.heartbeat([one], ttl=30)
        await self.expire(store)

        assert await store.counts("supplier", [10]) == {10: 1}

    async def test_track_and_untrack_weddings(self) -> None:
        store = self.make_store()
        one = conn(1, 10)
        await store.register(one, user_limit=1, supplier_limit=1, ttl=30)

        await store.track(one, "wedding", [7, 8], 30)
        counted = await store.counts("wedding", [7, 8])
        await store.untrack(one, "wedding", [7])

        assert counted == {7: 1, 8: 1}
        assert await store.counts("wedding", [7, 8]) == {7: 0, 8: 1}
        assert await store.totals("wedding") == {8: 1}


class TestLocalConnections(RegistryContract):
    def make_store(self) -> LocalCounts:
        self.clock = Clock()
        return LocalCounts(clock=self.clock)

    async def expire(self, store: LocalCounts) -> None:
        self.clock.now += 1


@pytest.mark.redis
class TestRedisConnections(RegistryContract):
    @pytest.fixture(autouse=True)
    def _own_keys(self, redis_url: str, redis_key_prefix: str) -> None:
        self.url, self.prefix = redis_url, redis_key_prefix

    def make_store(self) -> RedisCounts:
        return RedisCounts(self.url, key_prefix=self.prefix)

    async def expire(self, store: RedisCounts) -> None:
        await asyncio.sleep(0.3)  # Redis's own clock decides expiry

    async def test_two_processes__one_limit(self) -> None:
        here = RedisCounts(self.url, key_prefix=self.prefix)
        there = RedisCounts(f"{self.url}?client_name=other", key_prefix=self.prefix)
        await here.register(conn(1, 10), user_limit=9, supplier_limit=2, ttl=30)
        await there.register(conn(2, 10), user_limit=9, supplier_limit=2, ttl=30)

        refused = await here.register(conn(3, 10), user_limit=9, supplier_limit=2, ttl=30)

        assert refused is not None and refused.kind == "supplier"

    async def test_heartbeat__re_adds_entries_redis_lost(self) -> None:
        store = self.make_store()
        one = conn(1, 10)
        await store.register(one, user_limit=1, supplier_limit=1, ttl=30)
        client = redis.Redis.from_url(self.url)
        client.delete(*client.scan_iter(match=f"{self.prefix}:*"))  # as after a restart
        client.close()

        await store.heartbeat([one], ttl=30)

        assert await store.counts("supplier", [10]) == {10: 1}


@override_settings(REALTIME_MAX_CONNECTIONS_PER_USER=1)
async def test_registry__redis_unreachable__limits_held_in_this_process() -> None:
    registry = ConnectionCounter("redis://127.0.0.1:1/0")
    first = conn(1, 10)

    accepted = await asyncio.wait_for(registry.register(first, supplier_limit=5), 10)
    refused = await registry.register(conn(1, 10), supplier_limit=5)
    counts = await registry.counts("user", [1])

    assert accepted is None
    assert refused is not None and refused.kind == "user"
    assert counts == {1: 1}


@override_settings(REALTIME_MAX_CONNECTIONS_PER_SUPPLIER=200, REALTIME_WEDDING_DAY_MULTIPLIER=10)
def test_supplier_limit__wedding_day_mode__multiplied() -> None:
    assert supplier_limit(False) == 200
    assert supplier_limit(True) == 2000


# --- the staff view -------------------------------------------------------------------------


@pytest.mark.django_db
def test_connections_api__not_staff__403(client) -> None:
    client.force_login(make_user())

    response = client.get("/api/realtime/connections")

    assert response.status_code == 403
    assert orjson.loads(response.content)["error"]["code"] == "forbidden"


@pytest.mark.django_db
def test_connections_api__anonymous__401(client) -> None:
    assert client.get("/api/realtime/connections").status_code == 401


@pytest.mark.django_db
@override_settings(REDIS_URL="", REALTIME_MAX_CONNECTIONS_PER_SUPPLIER=7)
def test_connections_api__staff__counts_per_supplier_and_wedding(client) -> None:
    from asgiref.sync import async_to_sync

    from realtime import connection_counts

    connection_counts._counters.clear()
    vendor = make_user()
    supplier = make_supplier(users=(vendor,))
    wedding = make_wedding()
    make_booking(supplier=supplier, wedding=wedding)
    registry = connection_counts.get_connection_counter()
    for _ in range(2):
        async_to_sync(registry.register)(
            conn(vendor.pk, supplier.pk, weddings=(wedding.pk,)), supplier_limit=7
        )
    wedding_day_mode_set(enabled=True, reason="Saturday", user=None)
    client.force_login(make_user(is_staff=True))

    try:
        body = orjson.loads(client.get("/api/realtime/connections").content)
    finally:
        connection_counts._counters.clear()

    assert body["suppliers"] == [{"id": supplier.pk, "name": supplier.name, "connections": 2}]
    assert body["weddings"][0]["id"] == wedding.pk
    assert body["weddings"][0]["connections"] == 2
    assert body["wedding_day_mode"] is True
    assert body["limits"]["per_supplier"] == 70
    assert body["degraded"] is False
