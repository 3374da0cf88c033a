"""A process's event broadcasts (``realtime.layer.TopicSends``): every topic's in seq
order, a burst in few Redis round trips, and a failed batch costing nothing later.

Against real Redis through channels-redis's pub/sub layer (production's), subscribed to
by a second layer as another server process would be.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from realtime import layer as layer_module
from realtime.layer import MAX_BATCH, TopicSends
from realtime.messages import event_message, group_name
from tests.servers import RedisServer

pytestmark = [pytest.mark.redis]

TOPICS = 3


def _layers(url: str) -> tuple[RedisPubSubChannelLayer, RedisPubSubChannelLayer]:
    """The sending process's layer and another process's, on one prefix of the test's own
    (pub/sub channels are shared by the whole Redis)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    host = {"address": url, "socket_timeout": None}
    return (RedisPubSubChannelLayer(hosts=[host], prefix=prefix),
            RedisPubSubChannelLayer(hosts=[host], prefix=prefix))  # fmt: skip


class Listener:
    """Another process's layer, in every topic's group, recording (topic, seq)."""

    def __init__(self, layer: RedisPubSubChannelLayer, topics: list[str]) -> None:
        self.layer, self.topics = layer, topics
        self.got: list[tuple[str, int]] = []
        self.channel = ""

    async def start(self) -> None:
        self.channel = await self.layer.new_channel()
        for topic in self.topics:
            await self.layer.group_add(group_name(topic), self.channel)

    async def receive_until(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.got) < count:
                message = await self.layer.receive(self.channel)
                self.got.append((message["topic"], message["seq"]))


def _message(topic: str, seq: int) -> dict:
    return event_message(topic, seq, f'{{"seq":{seq}}}', 0.0)


async def test_burst__every_topic_in_seq_order_in_few_round_trips(redis_url, monkeypatch):
    # given: the sending process's layer and another process listening to three topics
    sender, other = _layers(redis_url)
    monkeypatch.setattr(layer_module, "get_channel_layer", lambda: sender)
    topics = [f"wedding:{uuid.uuid4().hex[:6]}" for _ in range(TOPICS)]
    listener = Listener(other, topics)
    await listener.start()
    sends = TopicSends()
    per_topic = 200
    try:
        # when: the database threads hand over a burst, the topics interleaved
        for seq in range(1, per_topic + 1):
            for topic in topics:
                sends.submit(topic, seq, _message(topic, seq))
        await listener.receive_until(per_topic * TOPICS)
    finally:
        await listener.layer.flush()
        await sender.flush()
    # then: each topic's seqs arrived complete and in order
    for topic in topics:
        assert [seq for t, seq in listener.got if t == topic] == list(range(1, per_topic + 1))
    # and the burst went out in batches, not one round trip per event
    assert sends.sent == per_topic * TOPICS
    assert sends.batches <= -(-per_topic * TOPICS // MAX_BATCH) + 1


async def test_in_memory_layer__one_send_each_in_order(settings):
    # given: the embedded default's layer (no pipelines)
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    from channels.layers import get_channel_layer

    memory = get_channel_layer()
    channel = await memory.new_channel()
    await memory.group_add(group_name("wedding:1"), channel)
    sends = TopicSends()
    # when
    for seq in range(1, 51):
        sends.submit("wedding:1", seq, _message("wedding:1", seq))
    got = [(await memory.receive(channel))["seq"] for _ in range(50)]
    # then
    assert got == list(range(1, 51))


async def test_redis_down__the_batch_is_logged_and_dropped_and_later_ones_sent(monkeypatch, caplog):
    # given: a Redis of the test's own, and a listener on it
    from core.breaker import breakers_reset

    redis = RedisServer()
    try:
        sender, other = _layers(redis.url)
        monkeypatch.setattr(layer_module, "get_channel_layer", lambda: sender)
        listener = Listener(other, ["wedding:7"])
        await listener.start()
        sends = TopicSends()
        sends.submit("wedding:7", 1, _message("wedding:7", 1))
        await listener.receive_until(1)
        # when: Redis dies, a broadcast is handed over, Redis comes back
        redis.kill()
        with caplog.at_level(logging.DEBUG, logger="realtime.layer"):
            sends.submit("wedding:7", 2, _message("wedding:7", 2))
            async with asyncio.timeout(10):
                while sends._sender is not None:
                    await asyncio.sleep(0.05)
        redis.start()
        await sender.flush()
        await listener.layer.flush()
        breakers_reset()
        await listener.start()
        for _ in range(100):  # the listener's subscription is back when a probe arrives
            sends.submit("wedding:7", 3, _message("wedding:7", 3))
            try:
                await listener.receive_until(2, timeout=0.2)
                break
            except TimeoutError:
                continue
        # then: seq 2 was dropped with a log line (the log fills it for subscribers),
        # and the sender goes on with later broadcasts
        assert ("wedding:7", 1) in listener.got and ("wedding:7", 3) in listener.got
        assert ("wedding:7", 2) not in listener.got
        assert any("not sent" in r.getMessage() or "failed" in r.getMessage()
                   for r in caplog.records if r.name == "realtime.layer")  # fmt: skip
        assert sends.sent >= 2  # seq 1 and the probes; seq 2 was never counted as sent
    finally:
        redis.kill()
