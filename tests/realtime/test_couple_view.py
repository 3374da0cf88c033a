"""The couple's run-sheet view of a wedding topic (docs/security.md, the role matrix) on
every path an event takes to a connection: live from the hub, replayed from the hub's
memory, replayed and gap-filled from the log, across two server processes; and the full
view lost when the user stops being a vendor of the wedding.

The view is a shortcut on the delivery path (one decode per event per process for all
the couple's connections), so each path is tried, not only the first.
"""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

import pytest
from channels.db import database_sync_to_async

from realtime import services
from realtime.access import connections_recheck
from realtime.delivery import topic_positions
from realtime.node import get_node
from realtime.protocol import HIDDEN_EVENT, plan_view_text
from realtime.services import event_publish
from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.realtime import test_consumer, test_e2e
from tests.realtime.test_consumer import Conn
from tests.realtime.test_e2e import open_ws
from weddings.models import Booking, Supplier

opened = test_consumer.opened
servers = test_e2e.servers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

NOTE = "stuck behind a tractor"


@database_sync_to_async
def day() -> dict[str, Any]:
    """Wedding A: a planner, a photographer, the couple."""
    planner, photographer, couple = make_user(), make_user(), make_user()
    wedding = make_wedding(couple=(couple,))
    planners = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    photographers = make_supplier(users=(photographer,))
    make_booking(supplier=planners, wedding=wedding)
    make_booking(supplier=photographers, wedding=wedding)
    return {
        "topic": wedding.topic, "wedding": wedding, "planner": planner,
        "photographer": photographer, "couple": couple, "photographers": photographers,
    }  # fmt: skip


def _publish_day(d: dict[str, Any]) -> None:
    """A status with a note, a message, an emergency, a wedding change (seq +1 … +4)."""
    status = {"supplier_id": d["photographers"].pk, "status": "running_late",
              "minutes_late": 5, "note": NOTE}  # fmt: skip
    event_publish(topic=d["topic"], event="vendor.status", payload=status, user=d["photographer"])
    event_publish(topic=d["topic"], event="message.posted", payload={"text": "hi"},
                  user=d["planner"])  # fmt: skip
    event_publish(topic=d["topic"], event="emergency.raised",
                  payload={"kind": "medical", "text": "x"}, user=d["photographer"])  # fmt: skip
    event_publish(topic=d["topic"], event="wedding.updated", payload={"guest_count": 80},
                  user=d["planner"])  # fmt: skip


publish_day = database_sync_to_async(_publish_day)

PLAN_VIEW = ["vendor.status", HIDDEN_EVENT, HIDDEN_EVENT, "wedding.updated"]
FULL_VIEW = ["vendor.status", "message.posted", "emergency.raised", "wedding.updated"]


def assert_plan_view(frames: list[dict[str, Any]], first_seq: int = 1) -> None:
    """Seqs contiguous; the coordination hidden; the status without its note."""
    assert [f["seq"] for f in frames] == list(range(first_seq, first_seq + len(frames)))
    assert [f["event"] for f in frames] == PLAN_VIEW
    hidden = [f for f in frames if f["event"] == HIDDEN_EVENT]
    assert all(f["payload"] == {} and f["actor"]["user_id"] is None for f in hidden), hidden
    assert "note" not in frames[0]["payload"] and frames[0]["payload"]["minutes_late"] == 5


async def events(conn: Conn, count: int) -> list[dict[str, Any]]:
    return [await conn.recv_type("event") for _ in range(count)]


async def subscribed(conn: Conn, topic: str, since: int | None = None) -> dict[str, Any]:
    options = {} if since is None else {"since": since}
    reply = await conn.request({"type": "subscribe", "topics": {topic: options}})
    assert reply["topics"][topic]["status"] == "ok", reply
    return reply["topics"][topic]


async def test_live__the_couple_get_the_run_sheet_and_the_vendors_everything(opened):
    # given the couple and the photographer subscribed to A
    d = await day()
    couple, _, _ = await opened(user=d["couple"])
    vendor, _, _ = await opened(user=d["photographer"])
    await subscribed(couple, d["topic"])
    await subscribed(vendor, d["topic"])

    # when the day goes on
    await publish_day(d)

    # then the same four events reach each as their role may read them
    assert_plan_view(await events(couple, 4))
    full = await events(vendor, 4)
    assert [f["event"] for f in full] == FULL_VIEW
    assert full[0]["payload"]["note"] == NOTE


async def test_replay_from_memory__is_the_run_sheet_too(opened):
    # given the hub holds A's latest events (a vendor was subscribed while they came)
    d = await day()
    vendor, _, _ = await opened(user=d["photographer"])
    await subscribed(vendor, d["topic"])
    await publish_day(d)
    await events(vendor, 4)
    recent = get_node().hub.recent_of(d["topic"])
    assert recent is not None and recent.first == 1 and recent.last == 4

    # when the couple subscribe with since=0 (served from that memory, no log read)
    couple, _, _ = await opened(user=d["couple"])
    status = await subscribed(couple, d["topic"], since=0)

    # then
    assert status == {"status": "ok", "seq": 4, "recovered": True, "epoch": ANY}
    assert_plan_view(await events(couple, 4))


async def test_replay_from_the_log__is_the_run_sheet_too(opened):
    # given four events stored while nobody on this process followed A
    d = await day()
    await publish_day(d)
    assert get_node().hub.recent_of(d["topic"]) is None

    # when the couple subscribe with since=0
    couple, _, _ = await opened(user=d["couple"])
    await subscribed(couple, d["topic"], since=0)

    # then
    assert_plan_view(await events(couple, 4))


async def test_gap_fill__of_events_the_layer_lost_is_the_run_sheet_too(opened):
    # given the couple subscribed, and four events stored that the layer never carried
    d = await day()
    couple, _, _ = await opened(user=d["couple"])
    await subscribed(couple, d["topic"])
    with_broadcast = services.broadcast_event
    services.broadcast_event = lambda event: None
    try:
        await publish_day(d)
    finally:
        services.broadcast_event = with_broadcast

    # when the sweep finds them missing (twice: the first only marks how far behind)
    registry = get_node().consumers
    await registry.sweep(topic_positions)
    await registry.sweep(topic_positions)

    # then they are filled from the log in the couple's view
    assert_plan_view(await events(couple, 4))


async def test_full_view_lost__a_vendor_in_the_couple_drops_to_the_run_sheet(opened):
    # given a user who is both in A's couple and the photographer: a vendor there
    d = await day()
    both = d["photographer"]
    await database_sync_to_async(d["wedding"].couple.add)(both)
    conn, _, _ = await opened(user=both)
    await subscribed(conn, d["topic"])

    # when the photographer's booking on A ends
    await database_sync_to_async(
        lambda: Booking.objects.get(supplier=d["photographers"], wedding=d["wedding"]).delete()
    )()

    # then the full view ends at once; subscribing again gives the couple's view
    gone = await conn.recv_type("unsubscribed")
    assert gone["topic"] == d["topic"] and gone["code"] == "forbidden"
    await subscribed(conn, d["topic"])
    for event, payload in (("message.posted", {"text": "hi"}), ("wedding.updated", {"notes": "n"})):
        await database_sync_to_async(event_publish)(
            topic=d["topic"], event=event, payload=payload, user=d["planner"]
        )
    frames = await events(conn, 2)
    assert [f["event"] for f in frames] == [HIDDEN_EVENT, "wedding.updated"]


def test_plan_view_text__leaves_the_run_sheet_as_it_is():
    # an event the couple may read in full is the very same text (no re-encoding)
    text = '{"type":"event","topic":"wedding:1","seq":3,"event":"wedding.updated","priority":"normal","payload":{"guest_count":5},"actor":{"user_id":2,"supplier_id":null},"ts":"2026-06-13T14:00:00.000Z"}'  # noqa: E501

    assert plan_view_text(text) is text


@pytest.mark.slow
@pytest.mark.redis
async def test_two_processes__the_couple_on_one_get_the_run_sheet_of_events_from_the_other(
    servers,
):
    # given the couple on process 1 and the photographer on process 2
    d = await day()
    tokens = await database_sync_to_async(
        lambda: [token_issue(user=d["couple"]), token_issue(user=d["photographer"])]
    )()
    couple = await open_ws(servers[0], tokens[0])
    vendor = await open_ws(servers[1], tokens[1])
    for ws in (couple, vendor):
        reply = await ws.request({"type": "subscribe", "topics": {d["topic"]: {}}})
        assert reply["topics"][d["topic"]]["status"] == "ok"

    # when the day's events are published through process 2
    for frame in (
        {"event": "vendor.status", "payload": {"supplier_id": d["photographers"].pk,
                                               "status": "running_late", "minutes_late": 5,
                                               "note": NOTE}},
        {"event": "message.posted", "payload": {"text": "hi"}},
        {"event": "emergency.raised", "payload": {"kind": "medical", "text": "x"}},
    ):  # fmt: skip
        reply = await vendor.request({"type": "publish", "topic": d["topic"], **frame})
        assert reply["status"] == "ok", reply

    # then process 1 delivers them to the couple in their view, process 2 in full
    await couple.wait_events(3)
    await vendor.wait_events(3)
    assert [f["event"] for f in couple.events] == PLAN_VIEW[:3]
    assert "note" not in couple.events[0]["payload"]
    assert [f["event"] for f in vendor.events] == FULL_VIEW[:3]
    await couple.close()
    await vendor.close()


def test_periodic_recheck__ends_the_full_view_that_a_bulk_update_took_away():
    # given a user in the couple of a wedding and a vendor on it, reading it in full
    wedding = make_wedding()
    user = make_user()
    wedding.couple.add(user)
    supplier = make_supplier(users=(user,))
    make_booking(supplier=supplier, wedding=wedding)
    full = frozenset({wedding.topic})

    # when the booking ends by a bulk update (no signal: only the periodic re-check sees it)
    Booking.objects.filter(supplier=supplier).update(active=False)
    verdicts, _ = connections_recheck(
        [(user, [wedding.topic], full), (user, [wedding.topic], frozenset())]
    )

    # then the full view is lost; the run-sheet view of the same user stays
    assert verdicts == [[wedding.topic], []]
