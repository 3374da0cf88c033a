"""Priority under overload (docs/adr/0031-priority-under-overload.md).

The database threads take critical work first without starving the rest; an outbox sends
critical events ahead of other topics only, and sheds presence, then ordinary events,
never a critical one nor a seq; a server process at its connection cap refuses by vendor
category. Real threads, the real database and Redis, a real server process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.db import connections
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from core import db
from core.db import BACKGROUND, CRITICAL, ORDINARY, PriorityExecutor, db_priority, in_db_thread
from realtime import services
from realtime.consumers import RealtimeConsumer
from realtime.delivery import Outbox, TopicStream, shed_counts
from realtime.limits import admit_threshold, category_rank, event_class
from realtime.models import Event
from realtime.protocol import event_frame_text
from realtime.tokens import token_issue
from scaling.warming import ceremony_at, warm_plan
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import Server

pytestmark = [pytest.mark.timeout(30)]


# --- the database threads -----------------------------------------------------------------


class Gate:
    """Holds the executor's threads busy until opened; records the order calls ran in."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started = threading.Event()  # a thread is held
        self.ran: list[str] = []
        self.lock = threading.Lock()

    def block(self) -> None:
        self.started.set()
        assert self.open.wait(10)

    def record(self, name: str) -> None:
        with self.lock:
            self.ran.append(name)


def _submit(executor: PriorityExecutor, priority: int, fn: Any, *args: Any) -> Any:
    with db_priority(priority):
        return executor.submit(fn, *args)


def test_executor__takes_critical_then_ordinary_then_background() -> None:
    # given one thread held busy, and work of every class queued, the least urgent first
    executor = PriorityExecutor(1, max_wait=10.0)
    gate = Gate()
    busy = executor.submit(gate.block)
    futures = [
        _submit(executor, priority, gate.record, f"{name}{i}")
        for name, priority in (("b", BACKGROUND), ("o", ORDINARY), ("c", CRITICAL))
        for i in range(3)
    ]

    # when the thread comes free
    gate.open.set()
    for future in [busy, *futures]:
        future.result(5)

    # then the critical calls ran first, the replays last, each class in its own order
    assert gate.ran == ["c0", "c1", "c2", "o0", "o1", "o2", "b0", "b1", "b2"]
    executor.shutdown()


def test_executor__switched_off__one_fifo() -> None:
    executor = PriorityExecutor(1, max_wait=10.0, enabled=False)
    gate = Gate()
    busy = executor.submit(gate.block)
    futures = [
        _submit(executor, p, gate.record, name)
        for name, p in (("b", BACKGROUND), ("o", ORDINARY), ("c", CRITICAL))
    ]

    gate.open.set()
    for future in [busy, *futures]:
        future.result(5)

    assert gate.ran == ["b", "o", "c"]
    executor.shutdown()


def test_executor__a_flood_of_critical_work_never_starves_ordinary_beyond_the_bound() -> None:
    # given a thread kept busy by critical calls of 10 ms, queued faster than it runs them
    bound = 0.1
    executor = PriorityExecutor(1, max_wait=bound)
    stop = threading.Event()

    def critical() -> None:
        time.sleep(0.01)

    def flood() -> None:
        while not stop.is_set():
            with db_priority(CRITICAL):
                if sum(executor.queued()) < 50:
                    executor.submit(critical)
            time.sleep(0.002)

    feeder = threading.Thread(target=flood)
    feeder.start()
    try:
        time.sleep(0.05)
        # when an ordinary call and a replay are queued behind the flood
        queued_at = time.monotonic()
        ordinary = _submit(executor, ORDINARY, time.monotonic)
        background = _submit(executor, BACKGROUND, time.monotonic)
        ran_ordinary = ordinary.result(5)
        ran_background = background.result(5)
        critical_still_queued = executor.queued()[CRITICAL]
    finally:
        stop.set()
        feeder.join()
    # then each ran soon after the bound (plus a critical call and a loaded machine's
    # scheduling), while critical work was still waiting: taken because it was overdue,
    # not because the flood ended
    # (without the bound they would run only when the flood stops: never, here)
    assert ran_ordinary - queued_at < bound + 1.0
    assert ran_background - queued_at < bound + 1.0
    assert critical_still_queued > 0
    assert executor.overdue >= 2
    executor.shutdown()


def test_executor__sustained_overload__critical_still_taken_before_the_overdue_backlog() -> None:
    # given a backlog of ordinary calls that have all waited past the bound (a sustained
    # overload), and then a critical call
    executor = PriorityExecutor(1, max_wait=0.001)
    gate = Gate()
    busy = executor.submit(gate.block)
    assert gate.started.wait(5)
    futures = [_submit(executor, ORDINARY, gate.record, f"o{i}") for i in range(5)]
    time.sleep(0.01)
    futures.append(_submit(executor, CRITICAL, gate.record, "c"))

    # when the thread comes free
    gate.open.set()
    for future in [busy, *futures]:
        future.result(5)

    # then the overdue calls and the critical one take turns: it waits for one overdue
    # call at most (none when the thread's previous call was an overdue one), not for all
    assert gate.ran.index("c") <= 1
    assert [name for name in gate.ran if name != "c"] == ["o0", "o1", "o2", "o3", "o4"]
    executor.shutdown()


@pytest.mark.django_db(transaction=True)
async def test_in_db_thread__a_critical_publish_overtakes_queued_ordinary_ones(monkeypatch) -> None:
    # given the process's database threads reduced to one, held busy, and real publishes
    # queued behind it: ordinary messages first, then an emergency
    wedding, user = await database_sync_to_async(_wedding_with_vendor)()
    executor = PriorityExecutor(1, max_wait=10.0)
    monkeypatch.setattr(db, "_executor", executor)
    gate = Gate()
    busy = asyncio.ensure_future(in_db_thread(gate.block)())
    await asyncio.sleep(0.05)

    def publish(event: str, payload: dict) -> Any:
        return in_db_thread(services.event_publish, priority=_priority_of(event))(
            topic=wedding.topic, event=event, payload=payload, user=user
        )

    ordinary = [
        asyncio.ensure_future(publish("message.posted", {"text": f"m{i}"})) for i in range(3)
    ]
    await asyncio.sleep(0.05)
    emergency = asyncio.ensure_future(
        publish("emergency.raised", {"kind": "medical", "text": "guest fainted"})
    )
    await asyncio.sleep(0.05)

    # when the thread comes free
    gate.open.set()
    await busy
    results = await asyncio.gather(emergency, *ordinary)

    # then the emergency was stored first: it has the topic's first seq
    assert [r.event.seq for r in results] == [1, 2, 3, 4]
    assert executor.taken[CRITICAL] == 1
    await in_db_thread(connections.close_all)()  # the thread's own connection
    executor.shutdown()


def _priority_of(event: str) -> int:
    return CRITICAL if event_class(event) == "critical" else ORDINARY


def _wedding_with_vendor() -> tuple[Any, Any]:
    wedding = make_wedding()
    user = make_user()
    make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
    return wedding, user


def test_event_class__emergencies_and_timeline_changes_of_the_catalogue_only() -> None:
    assert event_class("emergency.raised") == "critical"
    assert event_class("timeline.shifted") == "critical"
    assert event_class("timeline.item.updated") == "critical"
    assert event_class("message.posted") == "ordinary"
    assert event_class("vendor.status") == "ordinary"
    assert event_class("timeline.bogus") == "ordinary"  # not in the catalogue: no queue jump


# --- the outbox: what may be reordered, what is shed --------------------------------------


class Socket:
    """An outbox's send: frames are written only while ``flowing`` is set."""

    def __init__(self) -> None:
        self.flowing = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        await self.flowing.wait()
        self.sent.append(text)


def _frame(topic: str, seq: int, event: str) -> str:
    return orjson.dumps({"type": "event", "topic": topic, "seq": seq, "event": event}).decode()


def _seqs_by_topic(sent: list[str]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for text in sent:
        frame = orjson.loads(text)
        if frame.get("type") == "event":
            seen.setdefault(frame["topic"], []).append(frame["seq"])
    return seen


async def _drained(outbox: Outbox, socket: Socket) -> None:
    socket.flowing.set()
    await outbox.drain(5)


async def test_outbox__critical_goes_before_other_topics_never_before_its_own() -> None:
    # given a stalled socket and a backlog: A's ordinary event, presence, B's ordinary event
    socket = Socket()
    outbox = Outbox(socket.send, maxsize=64, put_timeout=1)
    outbox.put_nowait('{"type":"hello"}')  # being written when the socket stalls
    await asyncio.sleep(0)
    outbox.put_event("A", _frame("A", 1, "message.posted"), critical=False)
    outbox.put_presence('{"type":"presence"}')
    outbox.put_event("B", _frame("B", 1, "vendor.status"), critical=False)

    # when critical events arrive for a topic with nothing queued (C), and for A
    outbox.put_event("C", _frame("C", 1, "emergency.raised"), critical=True)
    outbox.put_event("A", _frame("A", 2, "timeline.shifted"), critical=True)
    await _drained(outbox, socket)

    # then C's emergency jumped the queue; A's shift waited for A's earlier event
    order = [orjson.loads(t).get("topic", t[:20]) for t in socket.sent[1:]]
    assert order == ["C", "A", '{"type":"presence"}', "B", "A"]
    assert _seqs_by_topic(socket.sent) == {"C": [1], "A": [1, 2], "B": [1]}


async def test_outbox__a_queued_reply_or_replay_is_never_passed() -> None:
    socket = Socket()
    outbox = Outbox(socket.send, maxsize=64, put_timeout=1)
    outbox.put_nowait("first")
    await asyncio.sleep(0)
    await outbox.put('{"type":"reply","ref":"1"}')  # a subscribe's reply, then its replay

    outbox.put_event("C", _frame("C", 1, "emergency.raised"), critical=True)
    await _drained(outbox, socket)

    assert socket.sent == [
        "first",
        '{"type":"reply","ref":"1"}',
        _frame("C", 1, "emergency.raised"),
    ]


@pytest.mark.django_db(transaction=True)
async def test_shedding__presence_then_ordinary_events_never_critical_nor_a_seq(settings) -> None:
    # given a connection with a stalled socket (an outbox of 8 frames), subscribed to a
    # wedding whose log holds ordinary messages 1-6 and an emergency 7
    wedding, user = await database_sync_to_async(_wedding_with_vendor)()
    texts = await database_sync_to_async(_publish_all)(wedding, user)
    topic = wedding.topic
    socket = Socket()
    consumer = RealtimeConsumer()
    consumer.outbox = Outbox(socket.send, maxsize=8, put_timeout=1)
    stream = consumer.streams[topic] = TopicStream(topic, syncing=False)
    other = consumer.streams["wedding:999999"] = TopicStream("wedding:999999", syncing=False)
    shed_before = dict(shed_counts)
    consumer.outbox.put_nowait('{"type":"hello"}')  # being written when the socket stalls
    await asyncio.sleep(0)

    # when events and presence arrive faster than the socket takes them
    consumer.hub_event(topic, 1, texts[1])
    consumer.hub_event(topic, 2, texts[2])  # 2 of 8 queued: a quarter full
    consumer.hub_presence(topic, '{"type":"presence","n":1}')  # shed
    consumer.hub_event(other.topic, 1, _frame(other.topic, 1, "vendor.status"))
    consumer.hub_event(topic, 3, texts[3])  # 4 of 8 queued: half full
    consumer.hub_event(topic, 4, texts[4])  # shed: the topic now waits in the log
    consumer.hub_presence(topic, '{"type":"presence","n":2}')  # shed
    consumer.hub_event(topic, 5, texts[5])
    consumer.hub_event(topic, 6, texts[6])

    # then presence went first (both diffs), then the ordinary events past half full; the
    # topic stopped at 3 with no gap (4 to 6 are in the log, not lost)
    assert shed_counts["presence"] - shed_before.get("presence", 0) == 2
    assert shed_counts["event"] - shed_before.get("event", 0) == 1
    assert (stream.last_seq, stream.shed) == (3, True)

    # when the emergency arrives while the topic is shed: it is never shed, and it cannot
    # jump seqs 4 to 6, so they are filled from the log first
    consumer.hub_event(topic, 7, texts[7])
    socket.flowing.set()
    for _ in range(100):
        if stream.last_seq == 7 and not stream.syncing:
            break
        await asyncio.sleep(0.02)
    await consumer.outbox.drain(5)

    # then the client saw every seq of the topic once, in order, the emergency included
    assert _seqs_by_topic(socket.sent)[topic] == [1, 2, 3, 4, 5, 6, 7]
    assert not any('"presence"' in text for text in socket.sent)


def _publish_all(wedding: Any, user: Any) -> dict[int, str]:
    for i in range(6):
        services.event_publish(
            topic=wedding.topic, event="message.posted", payload={"text": f"m{i}"}, user=user
        )
    services.event_publish(
        topic=wedding.topic,
        event="emergency.raised",
        payload={"kind": "fire", "text": "kitchen"},
        user=user,
    )
    return {e.seq: event_frame_text(e) for e in Event.objects.filter(topic=wedding.topic)}


# --- the process's connection cap, by vendor category -------------------------------------


def test_thresholds__others_first_then_the_listed_categories_from_the_last(settings) -> None:
    settings.REALTIME_CATEGORY_PRIORITY = ["photographer", "venue", "caterer"]
    settings.REALTIME_CAPACITY_RESERVE = 0.9

    assert category_rank({"photographer", "florist"}) == 0
    assert category_rank({"caterer"}) == 2
    assert category_rank({"florist"}) == 3
    assert category_rank(set(), staff=True) == 0
    assert [round(admit_threshold(r), 4) for r in range(4)] == [1.0, 0.9667, 0.9333, 0.9]

    settings.REALTIME_PRIORITY = False
    assert admit_threshold(3) == 1.0


# The capped server's cache keys, which its test shares (a token is checked through them).
SERVER_NAMESPACE = f"test-priority-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def capped_server(django_db_setup, django_db_blocker):
    server = Server(
        CACHE_NAMESPACE=SERVER_NAMESPACE,
        REALTIME_MAX_CONNECTIONS="6",
        REALTIME_CAPACITY_RESERVE="0.5",
        REALTIME_CATEGORY_PRIORITY="photographer,venue,caterer",
    )
    yield server
    server.stop()


def _category_tokens() -> dict[str, str]:
    wedding = make_wedding()
    tokens = {}
    for category in ("photographer", "venue", "caterer", "florist"):
        user = make_user()
        make_booking(supplier=make_supplier(users=(user,), category=category), wedding=wedding)
        tokens[category] = token_issue(user=user)
    return tokens


async def _try_connect(server: Server, token: str) -> Any:
    """An open connection, or the close code it was refused with."""
    ws = await connect(f"{server.ws_url}?token={token}")
    try:
        await asyncio.wait_for(ws.recv(), 0.4)
    except TimeoutError:
        return ws  # accepted and kept open
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    return ws


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_capacity__refuses_others_first_then_caterer_venue_photographer(
    capped_server, settings
):
    settings.CACHE_NAMESPACE = SERVER_NAMESPACE
    # given a process capped at 6 connections, reserve from 3 (50 %): others up to 3,
    # caterers up to 4, venues up to 5, photographers up to the cap
    tokens = await database_sync_to_async(_category_tokens)()
    opened = []

    async def attempt(category: str) -> Any:
        result = await _try_connect(capped_server, tokens[category])
        if not isinstance(result, int | None):
            opened.append(result)
            return "open"
        return result

    try:
        # when each category tries to connect as the process fills
        outcomes = [await attempt("florist") for _ in range(5)]
        outcomes += [await attempt("caterer") for _ in range(2)]
        outcomes += [await attempt("venue") for _ in range(2)]
        outcomes += [await attempt("photographer") for _ in range(2)]

        # then others were refused first, then caterers, then venues, then photographers
        assert outcomes == [
            *["open"] * 3, 4029, 4029,  # florist: others up to 3
            "open", 4029,  # caterer up to 4
            "open", 4029,  # venue up to 5
            "open", 4029,  # photographer up to 6, the cap: nobody past it
        ]  # fmt: skip

        # when one connection goes, a photographer gets in again, and a florist still not
        await opened.pop(0).close()
        await asyncio.sleep(0.3)
        assert await attempt("florist") == 4029
        assert await attempt("photographer") == "open"
    finally:
        for ws in opened:
            await ws.close()


@pytest.mark.django_db
def test_warm_plan__vendors_in_category_order_then_the_couples() -> None:
    # given a wedding about to start whose vendors are booked in every order of category
    couple = make_user()
    wedding = make_wedding(couple=(couple,))
    vendors = {}
    for category in ("florist", "caterer", "photographer", "venue"):
        vendors[category] = make_user()
        supplier = make_supplier(users=(vendors[category],), category=category)
        make_booking(supplier=supplier, wedding=wedding)

    # when the warming run is planned an hour before the ceremony
    plan = warm_plan(now=ceremony_at(wedding) - dt.timedelta(hours=1), horizon_hours=3)

    # then the day's priority vendors are warmed first, the couple last
    order = [vendors[c].pk for c in ("photographer", "venue", "caterer", "florist")]
    assert plan.vendors == order
    assert plan.users == [*order, couple.pk]
