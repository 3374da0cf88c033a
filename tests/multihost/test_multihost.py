"""Several hosts, really: the guarantees of PROTOCOL §7 across a real network.

Three hosts are network namespaces on one bridge (``bench.netns``): ``data``
runs a private Redis and PostgreSQL, ``web1`` and ``web2`` a server process each, and
the test's clients sit in the root namespace. While publishers on both servers run,
a server is crashed, a web host is cut from Redis, and every host's traffic is slowed;
at the end every acknowledged event must have reached every subscriber exactly once, in
order. Bounded in time; no assertion on how fast anything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time

import pytest
from psycopg import sql
from wedsync_client.client import ClientError, RealtimeClient

from realtime.models import Event

from .conftest import Deployment
from .processes import REDIS_PORT, HostServer

pytestmark = [pytest.mark.slow(seconds=45), pytest.mark.timeout(300)]

# Publishers may go well past the per-connection and per-user rate limits here.
FAST = {
    "REALTIME_PUBLISH_RATE": "1000", "REALTIME_PUBLISH_BURST": "1000",
    "REALTIME_USER_PUBLISH_RATE": "1000", "REALTIME_USER_PUBLISH_BURST": "1000",
    "REALTIME_FRAME_RATE": "10000", "REALTIME_FRAME_BURST": "10000",
    "REALTIME_USER_FRAME_RATE": "10000", "REALTIME_USER_FRAME_BURST": "10000",
    "REALTIME_USER_PUBLISH_BYTES_RATE": "100000000",
    "REALTIME_USER_PUBLISH_BYTES_BURST": "100000000",
}  # fmt: skip
# The latency added to every frame a host sends in the last phase (one way).
LATENCY_S = 0.05


@pytest.fixture
def server_extra_env() -> dict[str, str]:
    return FAST


class Subscriber:
    """A client library connection recording every seq it delivers and every state it
    goes through (a reconnect shows as ``reconnecting``)."""

    def __init__(self, urls: list[str], token: str) -> None:
        self.seqs: list[int] = []
        self.states: list[str] = []
        self.client = RealtimeClient(
            urls,
            token=token,
            on_event=lambda event: self.seqs.append(event["seq"]),
            on_state=self.states.append,
            backoff_initial=0.2,
            backoff_max=2,
        )

    async def start(self, topic: str, since: int | None = None) -> Subscriber:
        await self.client.connect()
        await self.client.subscribe(topic, since=None if since is None else {topic: since})
        return self


class Publishers:
    """Publishers sending message.posted with idempotency keys until told to stop, each
    retrying a failed publish with the same key (stored at most once) until it is
    acknowledged; ``acked`` holds every acknowledged seq, in the order acknowledged."""

    def __init__(self, name: str, topic: str, clients: list[RealtimeClient]) -> None:
        self.name, self.topic, self.clients = name, topic, clients
        self.acked: list[int] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _run(self, index: int, client: RealtimeClient) -> None:
        await client.connect()
        for n in itertools.count():
            if self._stop.is_set():
                break
            key = f"{self.name}{index}-{n}"
            while True:
                try:
                    seq = await client.publish(
                        self.topic, "message.posted", {"text": key}, idempotency_key=key,
                        retries=50,
                    )  # fmt: skip
                    break
                except ClientError as exc:
                    self.failures.append(exc.code)
                    await asyncio.sleep(0.2)
            self.acked.append(seq)
            await asyncio.sleep(0.1)
        await client.close()

    def start(self) -> Publishers:
        self._tasks = [asyncio.ensure_future(self._run(i, c)) for i, c in enumerate(self.clients)]
        return self

    async def stop(self) -> None:
        """Let each publisher finish its publish in flight (acknowledged), then close."""
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 90)

    async def abort(self) -> None:
        """Stop at once (a test that failed): cancel the publishers, close their clients."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 10)


async def eventually(condition, what: str, timeout: float = 60) -> None:
    """Wait until ``condition()`` (maybe a coroutine function) holds; fail after
    ``timeout`` seconds saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.2)


async def wait_readiness(server: HostServer, state: str, timeout: float = 60) -> None:
    """Wait until /readyz on ``server`` says ``state`` (``ready``, ``degraded`` ...)."""

    async def says() -> bool:
        return await asyncio.to_thread(server.readiness) == state

    await eventually(says, f"/readyz on {server.host.name} saying {state}", timeout)


def connect_seconds(address: str, port: int) -> float:
    """How long a TCP handshake with ``address:port`` takes from here."""
    start = time.monotonic()
    with socket.create_connection((address, port), timeout=10):
        return time.monotonic() - start


async def test_crash_partition_latency__every_acked_event_reaches_everyone_once_in_order(
    deployment: Deployment,
):
    # given the data host (Redis, PostgreSQL), a server on web1 and one on web2, two
    # subscribers and two publishers homed on each server and knowing the other too
    net, topic, tokens = deployment.network, deployment.topic, list(deployment.tokens)
    web1, web2 = deployment.servers["web1"], deployment.servers["web2"]
    await asyncio.gather(asyncio.to_thread(web1.start), asyncio.to_thread(web2.start))
    both = {"web1": [web1.ws_url, web2.ws_url], "web2": [web2.ws_url, web1.ws_url]}
    subscribers: list[Subscriber] = []  # the first four, on web1 and web2
    everyone: list[Subscriber] = []  # and the newcomer: closed at the end
    publishers: list[Publishers] = []
    try:
        for home in ("web1", "web1", "web2", "web2"):
            subscribers.append(Subscriber(both[home], tokens.pop()))
            everyone.append(subscribers[-1])
            await subscribers[-1].start(topic)
        early = Publishers(
            "early",
            topic,
            [RealtimeClient(both[home], token=tokens.pop()) for home in ("web1", "web2") * 2],
        ).start()
        publishers.append(early)
        await asyncio.sleep(2)

        # when web1's server is SIGKILLed
        await asyncio.to_thread(web1.kill)
        # then its clients reconnect to web2 (the other URL they know)
        moved = [s.client for s in subscribers[:2]] + early.clients[0::2]
        await eventually(
            lambda: all(c.url == web2.ws_url and c.state == "live" for c in moved),
            "every client of web1 live on web2",
        )
        await asyncio.sleep(1.5)

        # given web1's server started again (as its supervisor would), with publishers
        # of its own and a newcomer subscriber that replays from seq 1
        await asyncio.to_thread(web1.start)
        late = Publishers(
            "late", topic, [RealtimeClient([web1.ws_url], token=tokens.pop()) for _ in range(2)]
        ).start()
        publishers.append(late)
        newcomer = Subscriber([web1.ws_url], tokens.pop())
        everyone.append(newcomer)
        await newcomer.start(topic, since=0)
        await asyncio.sleep(1)

        # when web2, where all the first subscribers are now, is cut from Redis (not from
        # PostgreSQL, nor from its clients) while both servers take publishes
        await wait_readiness(web2, "ready")
        states_before = [len(s.states) for s in subscribers]
        await asyncio.to_thread(net.cut, net.hosts["web2"], net.hosts["data"], REDIS_PORT)
        try:
            # (web2 notices: it serves on, degraded, with Redis out of reach)
            await wait_readiness(web2, "degraded")
            marks = len(late.acked), len(early.acked)
            await asyncio.sleep(2)
            through_web1 = late.acked[marks[0] :]  # broadcast by web1; Redis cannot reach web2
            through_web2 = early.acked[marks[1] :]  # stored by web2, which cannot broadcast
            assert through_web1 and through_web2, (len(late.acked), len(early.acked))

            # then web2's subscribers get web1's events while web2 is still cut off from
            # Redis: its sweep caught them up from the event log, over the network
            for sub in subscribers:
                await sub.client.wait_for_seq(topic, max(through_web1), timeout=60)
            # and web1's newcomer gets those stored through web2 (web1's sweep, likewise)
            await newcomer.client.wait_for_seq(topic, max(through_web2), timeout=60)
            assert await asyncio.to_thread(web2.readiness) == "degraded"  # still cut off
            # and none of them reconnected for it
            assert [s.states[n:] for s, n in zip(subscribers, states_before, strict=True)] == [
                [] for _ in subscribers
            ]
        finally:
            await asyncio.to_thread(net.heal)
        # and once healed, web2 is ready again
        await wait_readiness(web2, "ready")

        # when every host's frames are delayed (each way between two hosts)
        await asyncio.to_thread(net.set_delay, LATENCY_S)
        try:
            # (the delay is real: web1's half of a handshake alone waits that long)
            handshake = await asyncio.to_thread(connect_seconds, web1.host.address, web1.port)
            assert handshake >= LATENCY_S
            acked_before = len(early.acked) + len(late.acked)
            await asyncio.sleep(4)
            # then publishing goes on under latency
            assert len(early.acked) + len(late.acked) > acked_before
        finally:
            await asyncio.to_thread(net.set_delay, 0)
        for group in publishers:
            await group.stop()

        # then every acknowledged event was stored once, and reached every subscriber
        # exactly once, in order
        count = sql.SQL("SELECT count(*) FROM {} WHERE topic = %s").format(
            sql.Identifier(Event._meta.db_table)
        )
        [(stored,)] = await asyncio.to_thread(deployment.database.query, count, (topic,))
        assert stored > 0
        assert sorted(early.acked + late.acked) == list(range(1, stored + 1))
        for sub in everyone:
            await sub.client.wait_for_seq(topic, stored, timeout=60)
            assert sub.seqs == list(range(1, stored + 1))
    except BaseException:
        for server in deployment.servers.values():
            print(f"--- {server.host.name} ---\n{server.output()}")
        raise
    finally:
        for group in publishers:
            await group.abort()  # nothing left to do after a normal stop
        for sub in everyone:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.client.close(), 10)
