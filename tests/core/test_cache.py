"""The two-tier cache: one contract run against every tier, then invalidation across real
processes, stampede protection, Redis going away, and stats."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.breaker import CircuitBreaker
from core.cache import L1Cache, L2Cache, TwoTierCache, get_cache, reset_cache

BASE_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(30)


def unique() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class CacheContract:
    """Semantics every tier combination must share; subclasses provide ``cache``."""

    def make(self, request: pytest.FixtureRequest) -> TwoTierCache:
        raise NotImplementedError

    @pytest.fixture
    def cache(self, request: pytest.FixtureRequest) -> TwoTierCache:
        return self.make(request)

    # sync
    def test_get__missing_key_returns_default(self, cache: TwoTierCache) -> None:
        assert cache.get("nope") is None
        assert cache.get("nope", "dflt") == "dflt"

    def test_set_then_get__returns_the_value(self, cache: TwoTierCache) -> None:
        value = {"id": 42, "items": [1, 2.5, "x", None, True], "nested": {"a": []}}
        cache.set("snapshot:42", value)
        cache.set("none", None)
        assert cache.get("snapshot:42") == value
        assert cache.get("none", "dflt") is None  # a cached None is a hit, not the default

    def test_delete__removes_the_value(self, cache: TwoTierCache) -> None:
        cache.set("k", 1)
        cache.delete("k")
        cache.delete("never-set")
        assert cache.get("k") is None

    def test_ttl__value_expires(self, cache: TwoTierCache) -> None:
        cache.set("short", "v", ttl=0.2)
        cache.set("long", "v")
        assert cache.get("short") == "v"
        time.sleep(0.35)
        assert cache.get("short") is None
        assert cache.get("long") == "v"

    def test_get_many__returns_present_keys_only(self, cache: TwoTierCache) -> None:
        cache.set("a", 1)
        cache.set("b", {"x": 2})
        assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": {"x": 2}}
        assert cache.get_many([]) == {}

    def test_get_or_load__loads_once_then_serves_cached(self, cache: TwoTierCache) -> None:
        calls = []
        loader = lambda: calls.append(1) or {"n": len(calls)}  # noqa: E731
        assert cache.get_or_load("k", loader) == {"n": 1}
        assert cache.get_or_load("k", loader) == {"n": 1}
        assert cache.get("k") == {"n": 1}
        assert len(calls) == 1

    def test_get_or_load__loader_error_reaches_caller_and_caches_nothing(
        self, cache: TwoTierCache
    ) -> None:
        def broken() -> None:
            raise LookupError("db says no")

        with pytest.raises(LookupError):
            cache.get_or_load("k", broken)
        assert cache.get("k", "absent") == "absent"
        assert cache.get_or_load("k", lambda: 5) == 5

    def test_get_or_load__20_threads_missing_one_key_load_once(self, cache: TwoTierCache) -> None:
        calls, barrier = [], threading.Barrier(20)

        def loader() -> str:
            calls.append(1)
            time.sleep(0.1)
            return "v"

        def worker(out: list) -> None:
            barrier.wait()
            out.append(cache.get_or_load("hot", loader))

        results: list = []
        threads = [threading.Thread(target=worker, args=(results,)) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == ["v"] * 20
        assert len(calls) == 1

    # async
    async def test_async__set_get_delete_get_many(self, cache: TwoTierCache) -> None:
        await cache.aset("a", {"x": [1, 2]})
        await cache.aset("b", "two")
        assert await cache.aget("a") == {"x": [1, 2]}
        assert await cache.aget_many(["a", "b", "c"]) == {"a": {"x": [1, 2]}, "b": "two"}
        await cache.adelete("a")
        assert await cache.aget("a", "gone") == "gone"

    async def test_async__ttl_expires(self, cache: TwoTierCache) -> None:
        await cache.aset("short", 1, ttl=0.2)
        await asyncio.sleep(0.35)
        assert await cache.aget("short") is None

    async def test_async__get_or_load_with_sync_and_async_loaders(
        self, cache: TwoTierCache
    ) -> None:
        async def aloader() -> dict:
            return {"async": True}

        assert await cache.aget_or_load("a", aloader) == {"async": True}
        assert await cache.aget_or_load("a", lambda: 1 / 0) == {"async": True}
        assert await cache.aget_or_load("s", lambda: [1]) == [1]
        with pytest.raises(ZeroDivisionError):
            await cache.aget_or_load("z", lambda: 1 / 0)

    async def test_async__50_concurrent_misses_load_once(self, cache: TwoTierCache) -> None:
        calls = []

        async def loader() -> dict:
            calls.append(1)
            await asyncio.sleep(0.1)
            return {"snapshot": 1}

        results = await asyncio.gather(*(cache.aget_or_load("hot", loader) for _ in range(50)))
        assert results == [{"snapshot": 1}] * 50
        assert len(calls) == 1

    async def test_async__followers_get_the_leaders_error(self, cache: TwoTierCache) -> None:
        async def loader() -> None:
            await asyncio.sleep(0.05)
            raise LookupError("no")

        results = await asyncio.gather(
            *(cache.aget_or_load("k", loader) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, LookupError) for r in results)

    def test_sync_write_is_read_async_and_back(self, cache: TwoTierCache) -> None:
        cache.set("s", {"from": "sync"})
        assert asyncio.run(cache.aget("s")) == {"from": "sync"}
        asyncio.run(cache.aset("a", {"from": "async"}))
        assert cache.get("a") == {"from": "async"}


class TestL1Contract(CacheContract):
    def make(self, request: pytest.FixtureRequest) -> TwoTierCache:
        return TwoTierCache(l1=L1Cache(ttl=5.0), l2=None, namespace=unique())


@pytest.mark.redis
class TestL2Contract(CacheContract):
    def make(self, request: pytest.FixtureRequest) -> TwoTierCache:
        url = request.getfixturevalue("redis_url")
        return TwoTierCache(l1=None, l2=L2Cache(url=url, ttl=30.0), namespace=unique())


@pytest.mark.redis
class TestTwoTierContract(CacheContract):
    def make(self, request: pytest.FixtureRequest) -> TwoTierCache:
        url = request.getfixturevalue("redis_url")
        return TwoTierCache(l1=L1Cache(ttl=5.0), l2=L2Cache(url=url, ttl=30.0), namespace=unique())

    def test_l2_value_is_served_to_a_cache_with_an_empty_l1(self, cache: TwoTierCache) -> None:
        cache.set("k", {"v": 1})
        other = TwoTierCache(l1=L1Cache(), l2=cache.l2, namespace=cache.namespace)
        assert other.get("k") == {"v": 1}
        assert other.stats()["l1"]["misses"] == 1
        assert other.stats()["l2"]["hits"] >= 1

    def test_get_or_load__a_write_during_the_load_wins_over_the_loaded_value(
        self, cache: TwoTierCache
    ) -> None:
        # given another process that writes the key while this one is loading it
        other = TwoTierCache(l1=L1Cache(), l2=cache.l2, namespace=cache.namespace)

        def loader() -> str:
            other.set("k", "new")  # committed after our loader read the database
            other.delete("gone")
            return "old"

        # when the load finishes
        assert cache.get_or_load("k", loader) == "old"
        assert cache.get_or_load("gone", loader) == "old"

        # then the older loaded value was not stored in either tier
        assert cache.get("k") == "new"
        assert cache.get("gone") is None
        assert other.get("k") == "new"

    async def test_aget_or_load__a_write_during_the_load_wins_over_the_loaded_value(
        self, cache: TwoTierCache
    ) -> None:
        other = TwoTierCache(l1=L1Cache(), l2=cache.l2, namespace=cache.namespace)

        async def loader() -> str:
            await other.aset("k", "new")
            return "old"

        assert await cache.aget_or_load("k", loader) == "old"
        assert await cache.aget("k") == "new"


# --- invalidation across real processes -----------------------------------------------------

READER = """
import sys, time, django
django.setup()
from core.cache import get_cache
key = sys.argv[1]
cache = get_cache()
assert cache.start_invalidation_listener().wait(5), "listener did not subscribe"
print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "get":
        print("value", cache.get(key), flush=True)
    elif cmd == "wait":
        start = time.monotonic()
        while cache.get(key) != arg and time.monotonic() - start < 5:
            time.sleep(0.002)
        print("value", cache.get(key), round(time.monotonic() - start, 3), flush=True)
"""


@pytest.mark.redis
def test_invalidation__write_in_one_process_reaches_the_other_well_before_l1_ttl(
    redis_url: str,
) -> None:
    # given a second process holding the key in its L1, whose TTL is 60 s
    key = unique()
    writer = TwoTierCache(l1=L1Cache(), l2=L2Cache(url=redis_url), namespace="wedsync")
    writer.set(key, "old")
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "CACHE_L1_TTL": "60",
        "DJANGO_SETTINGS_MODULE": "wedsync.settings",
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "DJANGO_DEBUG": "true",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, key],
        cwd=BASE_DIR,
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout

    def ask(cmd: str) -> list[str]:
        proc.stdin.write(cmd + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return proc.stdout.readline().split()  # type: ignore[union-attr]

    try:
        assert proc.stdout.readline().strip() == "ready"
        assert ask("get") == ["value", "old"]
        # a write to Redis that publishes nothing is not seen: the reader serves its L1
        assert writer.l2 is not None
        writer.l2.set(f"wedsync:{key}", "unannounced")
        assert ask("get") == ["value", "old"]

        # when this process writes through the cache
        writer.set(key, "new")

        # then the other process reads the new value within milliseconds, not 60 s
        _, value, elapsed = ask("wait new")
        assert value == "new"
        assert float(elapsed) < 1.0
    finally:
        proc.stdin.close()
        proc.wait(10)


# --- stampede across processes ----------------------------------------------------------------


@pytest.mark.redis
def test_get_or_load_with_lock__two_processes_load_once(redis_url: str) -> None:
    # two caches with their own L1 share Redis: two processes as far as locking goes
    namespace, calls = unique(), []
    caches = [
        TwoTierCache(l1=L1Cache(), l2=L2Cache(url=redis_url), namespace=namespace) for _ in range(2)
    ]
    barrier, results = threading.Barrier(2), []

    def loader() -> dict:
        calls.append(1)
        time.sleep(0.3)
        return {"expensive": True}

    def run(cache: TwoTierCache) -> None:
        barrier.wait()
        results.append(cache.get_or_load("k", loader, lock=True))

    threads = [threading.Thread(target=run, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [{"expensive": True}] * 2
    assert len(calls) == 1


@pytest.mark.redis
async def test_aget_or_load_with_lock__two_processes_load_once(redis_url: str) -> None:
    namespace, calls = unique(), []
    caches = [
        TwoTierCache(l1=L1Cache(), l2=L2Cache(url=redis_url), namespace=namespace) for _ in range(2)
    ]

    async def loader() -> int:
        calls.append(1)
        await asyncio.sleep(0.3)
        return 7

    results = await asyncio.gather(*(c.aget_or_load("k", loader, lock=True) for c in caches * 10))
    assert results == [7] * 20
    assert len(calls) == 1


# --- Redis going away -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            client.ping()
            return proc
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"redis-server on port {port} did not start")


@pytest.fixture
def own_redis() -> Iterator[dict]:
    """A redis-server of this test's own, which the test may stop and start again."""
    port = free_port()
    state = {"port": port, "proc": start_redis(port)}
    yield state
    state["proc"].kill()
    state["proc"].wait(5)


def test_redis_gone__reads_and_writes_degrade_to_l1_and_loader_then_recover(
    own_redis: dict,
) -> None:
    # given a warm two-tier cache on a Redis of our own
    breaker = CircuitBreaker(
        name="test-redis",
        failure_threshold=3,
        reset_timeout=0.5,
        failure_exceptions=(redis.RedisError, OSError, TimeoutError),
    )
    l2 = L2Cache(url=f"redis://127.0.0.1:{own_redis['port']}/0", breaker=breaker)
    cache = TwoTierCache(l1=L1Cache(ttl=60), l2=l2, namespace=unique())
    cache.start_invalidation_listener().wait(5)
    cache.set("warm", {"v": 1})

    # when Redis dies
    own_redis["proc"].kill()
    own_redis["proc"].wait(5)

    # then everything still answers from L1 and the loader, and the breaker opens
    started = time.monotonic()
    assert cache.get("warm") == {"v": 1}
    assert cache.get("cold", "dflt") == "dflt"
    assert cache.get_or_load("loaded", lambda: "from db") == "from db"
    assert cache.get_or_load("locked", lambda: "from db", lock=True) == "from db"
    cache.set("written", 3)
    cache.delete("warm")
    assert cache.get_many(["written", "x"]) == {"written": 3}
    assert breaker.state == "open"
    assert asyncio.run(cache.aget_or_load("async", lambda: "async db", lock=True)) == "async db"
    asyncio.run(cache.aset("aw", 1))
    asyncio.run(cache.adelete("aw"))
    assert time.monotonic() - started < 2.0  # failing fast, not waiting on sockets
    assert cache.stats()["l2"]["errors"] >= 3

    # when Redis comes back on the same port and the cool-down passes
    own_redis["proc"] = start_redis(own_redis["port"])
    time.sleep(0.6)

    # then the probe closes the breaker and L2 is used again
    assert cache.get("after", "dflt") == "dflt"
    assert breaker.state == "closed"
    # and the invalidation listener, back on Redis, drops L1: it may have missed messages
    deadline = time.monotonic() + 8
    while cache.get_many(["written"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.get_many(["written"]) == {}
    cache.set("after", {"v": 2})
    fresh = TwoTierCache(l1=None, l2=L2Cache(url=l2.url), namespace=cache.namespace)
    assert fresh.get("after") == {"v": 2}
    cache.stop_invalidation_listener()


def test_redis_unreachable_for_a_moment__lost_delete_is_replayed_when_it_answers(
    own_redis: dict,
) -> None:
    # given a value in a Redis that keeps its data but stops answering for a moment
    url = f"redis://127.0.0.1:{own_redis['port']}/0"
    cache = TwoTierCache(l1=None, l2=L2Cache(url=url, socket_timeout=0.2), namespace=unique())
    cache.set("k", "old")
    redis.Redis.from_url(url).execute_command("CLIENT", "PAUSE", 600, "ALL")

    # when a delete cannot reach it
    cache.delete("k")
    assert cache.l2 is not None and cache.l2.stats()["errors"] == 1

    # then the delete is made as soon as Redis answers again
    time.sleep(0.7)
    assert cache.get("other") is None
    assert cache.get("k") is None
    assert redis.Redis.from_url(url).exists(f"{cache.namespace}:k") == 0


# --- stats ------------------------------------------------------------------------------------


def test_l1_stats__hits_misses_sets_and_evictions_by_entries_and_bytes() -> None:
    by_count = L1Cache(max_entries=3, ttl=60)
    for i in range(5):
        by_count.set(f"k{i}", i)
    assert by_count.get("k4") == 4
    assert by_count.get("k0", None) is None
    stats = by_count.stats()
    assert (stats["hits"], stats["misses"], stats["sets"], stats["evictions"]) == (1, 1, 5, 2)
    assert stats["entries"] == 3

    by_bytes = L1Cache(max_entries=100, max_bytes=2500, ttl=60)
    for i in range(5):
        by_bytes.set(f"k{i}", "x" * 1000)  # ~1 KB each: only two fit
    stats = by_bytes.stats()
    assert stats["evictions"] == 3
    assert stats["bytes"] <= 2500
    assert by_bytes.get("k4") == "x" * 1000


def test_l1__expired_entries_leave_and_free_their_bytes() -> None:
    # given an entry of 102 bytes (msgpack: a 2-byte header and 100 characters) and a
    # smaller one that outlives it
    now = [0.0]
    l1 = L1Cache(ttl=5, timer=lambda: now[0])
    l1.set("k", "v" * 100)
    now[0] = 2.0
    l1.set("other", "w")
    now[0] = 4.9
    assert l1.get("k") == "v" * 100
    assert l1.stats()["entries"] == 2 and l1.stats()["bytes"] == 102 + 2

    # when its TTL has passed
    now[0] = 5.1

    # then it is a miss (the caller's default comes back), and it no longer holds memory
    missing = object()
    assert l1.get("k", missing) is missing
    assert l1.get("k", None) is None
    stats = l1.stats()
    assert stats["entries"] == 1 and stats["bytes"] == 2  # only "other" is left
    assert l1.get("other") == "w"


@pytest.mark.redis
def test_two_tier_stats__per_tier_counts_load_time_and_compression(redis_url: str) -> None:
    cache = TwoTierCache(l1=L1Cache(), l2=L2Cache(url=redis_url), namespace=unique())
    big = {"events": [{"kind": "timeline.updated", "text": "Ceremony moved to 14:30"}] * 500}

    cache.set("big", big)
    assert cache.get("big") == big  # L1 hit
    assert cache.get("absent") is None  # L1 miss, L2 miss
    cache.get_or_load("loaded", lambda: time.sleep(0.01) or 1)

    stats = cache.stats()
    assert stats["l1"]["hits"] == 1
    assert stats["l1"]["misses"] == 2
    assert stats["l2"]["misses"] == 2
    assert stats["l2"]["sets"] == 2
    assert stats["l1"]["sets"] == 2
    assert stats["l2"]["compression_ratio"] > 10
    assert stats["l2"]["bytes"] < stats["l2"]["raw_bytes"]
    assert stats["l1"]["loads"] == stats["l2"]["loads"] == 1
    assert stats["l1"]["load_time_s"] >= 0.01
    assert stats["l1"]["bytes"] > 0


@pytest.mark.redis
def test_get_cache__one_per_process_built_from_settings(redis_url: str, settings) -> None:
    settings.CACHE_L1_TTL = 7.0
    settings.CACHE_L1_MAX_ENTRIES = 123
    settings.REDIS_URL = redis_url
    reset_cache()
    try:
        cache = get_cache()
        assert get_cache() is cache
        assert cache.l1 is not None and cache.l1.ttl == 7.0 and cache.l1.max_entries == 123
        assert cache.l2 is not None and cache.l2.url == redis_url
        assert cache.start_invalidation_listener().wait(5)
    finally:
        reset_cache()


def test_get_cache__l1_only_without_redis(settings) -> None:
    settings.REDIS_URL = ""
    reset_cache()
    try:
        cache = get_cache()
        assert cache.l2 is None
        assert cache.get_or_load("k", lambda: 1) == 1
    finally:
        reset_cache()
