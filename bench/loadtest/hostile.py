"""``hostile-member``: one booked vendor floods its wedding while the wedding's other
members receive the planner's normal traffic (docs/security.md, "No member can flood a
wedding"; docs/benchmarks.md).

The run, on one seeded wedding (the planner first, ``members`` suppliers, then the
flooder's, a vendor that is not a planner):

1. the wedding's real history is written over the HTTP API: every member's supplier
   posts two statuses, the planner a message, a shift, and an emergency it resolves, a
   vendor an emergency it leaves open;
2. the ``members`` receivers subscribe (worker processes, as in saturday-peak) and the
   flooder process (``flooder``) gets ready;
3. for ``duration`` seconds the planner publishes a Saturday mix at ``rate``/s on one
   connection (``PlannerTraffic``) while the flooder floods every frame kind and the
   HTTP API as fast as the server answers;
4. the receivers are accounted against the topic's final seq as in saturday-peak: every
   event, the flood's included, must reach every member once and in order; latency is
   that of the planner's events (they carry their send time);
5. the database is checked (``integrity``): what the flooder got stored and through,
   against its budgets over the flood's length; the real history intact; the
   overdue-acknowledgement check run as the minute task would 6 to 21 minutes later (at
   most one alert for the wedding); retention run (nothing of the real history pruned).
   The overdue check and retention act on every wedding of the database, so they run
   only against a server this command started (a scratch database), not with ``--url``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings
from wedsync_client.client import ClientError, RealtimeClient

from . import integrity
from .accounting import publish_text
from .flooder import FloodProcess, FloodSpec
from .httpclient import HttpError, KeepAliveClient
from .merging import deliveries, merge_counters, merge_open, merge_totals
from .publishers import MAX_IN_FLIGHT, PublishStats
from .scenarios import HostileMember
from .seeding import WeddingLogins, final_seqs
from .worker import WorkerGroup

if TYPE_CHECKING:
    from .runner import Run

# The planner's Saturday, one publish after another: half messages, statuses of its own
# supplier, changes to a pinned item (the ones that never shift) and shifts of the rest
# (ack_required for the suppliers whose items moved: the overdue check chases them too).
PLANNER_MIX = (
    "message.posted", "vendor.status", "message.posted", "timeline.item.updated",
    "message.posted", "vendor.status", "message.posted", "message.posted",
    "vendor.status", "timeline.shifted",
)  # fmt: skip
PLANNER_STATUSES = ("arrived", "setting_up", "ready")
SHIFT_MINUTES = 5  # alternately later and earlier: the timeline ends where it started

# The per-user budgets the flooder meets (realtime/limits.py, PROTOCOL §8): budget ->
# (rate setting, burst setting, what of the flooder is counted against it).
BUDGETS = {
    "publish": ("REALTIME_USER_PUBLISH_RATE", "REALTIME_USER_PUBLISH_BURST",
                "ordinary events stored (WebSocket and HTTP)"),
    "critical": ("REALTIME_CRITICAL_PUBLISH_RATE", "REALTIME_CRITICAL_PUBLISH_BURST",
                 "emergencies stored (WebSocket and HTTP)"),
    "subscribe": ("REALTIME_USER_SUBSCRIBE_RATE", "REALTIME_USER_SUBSCRIBE_BURST",
                  "subscribes with since=0 answered ok"),
    "replay": ("REALTIME_USER_REPLAY_RATE", "REALTIME_USER_REPLAY_BURST",
               "events replayed (subscribes and history pages)"),
    "presence": ("REALTIME_USER_PRESENCE_RATE", "REALTIME_USER_PRESENCE_BURST",
                 "presence requests answered ok"),
    "ack": ("REALTIME_USER_ACK_RATE", "REALTIME_USER_ACK_BURST", "acks answered ok"),
    "token": ("REALTIME_TOKEN_ISSUE_PER_MINUTE", "REALTIME_TOKEN_ISSUE_BURST",
              "realtime tokens issued"),
}  # fmt: skip
CRITICAL_EVENTS = ("emergency.raised", "emergency.resolved")


class PlannerTraffic:
    """The wedding's normal traffic: its planner publishing ``PLANNER_MIX`` on one
    connection, open-loop at a fixed rate; every publish but a shift carries its send
    time (a message's text, a status's note, the pinned item's location)."""

    def __init__(self, url: str, token: str, topic: str, supplier_id: int,
                 timeline: integrity.Timeline) -> None:  # fmt: skip
        self.client = RealtimeClient(url, token=token, request_timeout=30.0)
        self.topic, self.supplier_id, self.timeline = topic, supplier_id, timeline
        self.version = timeline.pinned_version  # of the pinned item, as the next update expects
        self.shift = SHIFT_MINUTES
        self.in_flight = 0
        self.stats = PublishStats()
        self.by_event: dict[str, Counter] = defaultdict(Counter)
        self._tasks: set[asyncio.Task] = set()

    @property
    def ok(self) -> int:
        return self.stats.ok

    async def connect(self) -> None:
        await self.client.connect()

    async def run(self, rate: float, duration: float) -> PublishStats:
        """Publish at ``rate`` per second for ``duration`` seconds, then await the replies."""
        stats = self.stats
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        total = max(1, round(rate * duration))
        mix = itertools.cycle(PLANNER_MIX)
        started = loop.time()
        for n in range(total):
            due = started + n * interval
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                stats.max_lag_ms = max(stats.max_lag_ms, (now - due) * 1000)
            stats.scheduled += 1
            event = next(mix)
            if self.in_flight >= MAX_IN_FLIGHT:
                stats.skipped += 1
                continue
            task = loop.create_task(self._publish(event, n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        stats.seconds = max(loop.time() - started, total * interval)
        sent_at = loop.time()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=60)
        stats.tail_s = loop.time() - sent_at
        return stats

    def _payload(self, event: str, n: int) -> dict[str, Any]:
        # Made when the task starts, before its first await: tasks start in the order they
        # were created, so the pinned item's versions go out in order.
        stamp = publish_text(time.time_ns(), f"planner-{n}")
        if event == "message.posted":
            return {"text": stamp}
        if event == "vendor.status":
            status = PLANNER_STATUSES[n % len(PLANNER_STATUSES)]
            return {"supplier_id": self.supplier_id, "status": status, "note": stamp}
        if event == "timeline.item.updated":
            version, self.version = self.version, self.version + 1
            return {"id": self.timeline.pinned_id, "version": version, "location": stamp}
        minutes, self.shift = self.shift, -self.shift
        return {"from_item_id": self.timeline.shift_from_id, "minutes": minutes}

    async def _publish(self, event: str, n: int) -> None:
        stats = self.stats
        self.in_flight += 1
        stats.sent += 1
        started = time.perf_counter()
        payload = self._payload(event, n)
        try:
            await self.client.publish(self.topic, event, payload)
        except ClientError as exc:
            stats.errors[exc.code] += 1
            self.by_event[event][exc.code] += 1
            current = (getattr(exc, "reply", None) or {}).get("current") or {}
            if exc.code == "conflict" and isinstance(current.get("version"), int):
                self.version = current["version"]  # in step again for the next update
        else:
            stats.ok += 1
            self.by_event[event]["ok"] += 1
            stats.reply_ms.add((time.perf_counter() - started) * 1000)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()


async def write_real_history(host: str, port: int, wedding: WeddingLogins, members: int,
                             timeline: integrity.Timeline) -> dict[str, int]:  # fmt: skip
    """The wedding's state before the flood, over the HTTP API: two statuses of every
    member's supplier, the planner's message, shift and resolved emergency, and a vendor's
    open emergency. Returns the events written per kind."""
    clients: dict[int, KeepAliveClient] = {}
    written: Counter = Counter()
    path = f"/api/weddings/{wedding.id}/events"

    async def publish(member: int, event: str, payload: dict[str, Any]) -> int:
        client = clients.get(member)
        if client is None:
            headers = {"Authorization": f"Bearer {wedding.tokens[member]}"}
            client = clients[member] = KeepAliveClient(host, port, headers)
        key = f"hm{wedding.id}-{member}-{sum(written.values())}"
        body = {"event": event, "payload": payload, "idempotency_key": key}
        status, content = await client.post(path, orjson.dumps(body))
        if status not in (200, 201):
            raise RuntimeError(f"writing the real history: {event} got {status}: {content[:300]!r}")
        written[event] += 1
        return int(orjson.loads(content)["seq"])

    try:
        for member in range(members):
            for status in ("en_route", "arrived"):
                payload = {"supplier_id": wedding.supplier_ids[member], "status": status}
                await publish(member, "vendor.status", payload)
        await publish(0, "message.posted", {"text": "Morning all: the run sheet is live."})
        await publish(0, "timeline.shifted", {"from_item_id": timeline.shift_from_id,
                                              "minutes": 10})  # fmt: skip
        seq = await publish(
            0, "emergency.raised", {"kind": "weather", "text": "Rain at three: drinks move in."}
        )
        emergency_id = await _emergency_id(clients[0], wedding.id, seq)
        await publish(0, "emergency.resolved", {"id": emergency_id, "text": "Marquee is up."})
        vendor = 1 if members > 1 else 0
        await publish(
            vendor,
            "emergency.raised",
            {"kind": "medical", "text": "A guest fainted; first aider here."},
        )
    except (HttpError, OSError) as exc:
        raise RuntimeError(f"writing the real history: {exc}") from exc
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)
    return dict(written)


async def _emergency_id(client: KeepAliveClient, wedding_id: int, seq: int) -> str:
    """The server-made id of the emergency stored at ``seq`` (the publish reply has the
    seq only), from the history page."""
    status, content = await client.get(f"/api/weddings/{wedding_id}/events?since={seq - 1}&limit=1")
    if status != 200:
        raise RuntimeError(f"reading emergency #{seq}: {status}: {content[:300]!r}")
    return str(orjson.loads(content)["events"][0]["payload"]["id"])


# --- budgets --------------------------------------------------------------------------------


def budget_values(overrides: dict[str, str] | None = None) -> dict[str, tuple[float, float]]:
    """(rate per second, burst) of each of ``BUDGETS``: the server's environment overrides
    (``--server-env``) when it sets one, else these settings (the server's too)."""
    overrides = overrides or {}

    def value(name: str) -> float:
        return float(overrides[name]) if name in overrides else float(getattr(settings, name))

    out = {}
    for budget, (rate, burst, _) in BUDGETS.items():
        per_second = value(rate) / 60 if budget == "token" else value(rate)
        out[budget] = (per_second, value(burst))
    return out


def limits_report(
    flood: dict[str, Any],
    stored: dict[str, Any],
    budgets: dict[str, tuple[float, float]],
    final_seq: int,
) -> list[dict]:
    """Each budget: what the flooder got through (stored, or answered ok) against the most
    the budget allows over the flood's length, ``burst + rate x seconds``; a token of slack
    for rounding, and for replays one frame's cost above the burst (a frame dearer than
    the burst passes on a full bucket and leaves it in debt)."""
    seconds = flood["seconds"]
    kinds = flood["kinds"]
    events = stored["events"]

    def ok(kind: str) -> int:
        return int((kinds.get(kind) or {}).get("ok", 0))

    observed = {
        "publish": sum(n for e, n in events.items() if e not in CRITICAL_EVENTS),
        "critical": sum(n for e, n in events.items() if e in CRITICAL_EVENTS),
        "subscribe": ok("replay"),
        "replay": flood["ws"]["replayed_events"] + flood["http"]["replayed_events"],
        "presence": ok("presence"),
        "ack": ok("ack"),
        "token": ok("http_token"),
    }
    rows = []
    for budget, (rate, burst) in budgets.items():
        slack = 1 + (max(0, final_seq - burst) if budget == "replay" else 0)
        bound = burst + rate * seconds + slack
        rows.append({
            "budget": budget,
            "what": BUDGETS[budget][2],
            "rate_per_s": round(rate, 4),
            "burst": burst,
            "seconds": seconds,
            "bound": round(bound, 1),
            "observed": observed[budget],
            "within": observed[budget] <= bound,
        })  # fmt: skip
    return rows


# Kinds without a budget of their own: a flood of only these is never rate_limited.
UNLIMITED_KINDS = ("ping", "unsubscribe", "http_snapshot")


def flooder_limited(flood: dict[str, Any]) -> bool | None:
    """Whether the flooder met its budgets (a rate_limited reply or a 429); None when it
    sent nothing that has a budget (a control run, or only pings and snapshot reads)."""
    kinds = flood["kinds"]
    if not any(k["sent"] for name, k in kinds.items() if name not in UNLIMITED_KINDS):
        return None
    return any(k.get("rate_limited", 0) for k in kinds.values())


# --- the phase -------------------------------------------------------------------------------


async def hostile_member(scenario: HostileMember, world: list[WeddingLogins], run: Run) -> dict:
    """Flood one wedding from one member while the others receive the planner's traffic."""
    wedding, members = world[0], scenario.members
    topic, target = wedding.topic, run.target
    flooder = members  # the last supplier seeded: a vendor, never the planner (the first)
    flooder_user, planner_user = wedding.user_ids[flooder], wedding.user_ids[0]
    timeline = await asyncio.to_thread(integrity.timeline_targets, wedding.id)
    run.say(f"writing the real history of {topic} over the HTTP API")
    written = await write_real_history(target.host, target.port, wedding, members, timeline)
    before = await asyncio.to_thread(integrity.history, topic, flooder_user)
    flood = FloodProcess(
        FloodSpec(
            ws_url=target.ws_url, host=target.host, port=target.port,
            token=wedding.tokens[flooder], topic=topic, wedding_id=wedding.id,
            duration=scenario.duration, connections=scenario.flood_connections,
            http_clients=scenario.flood_http, start_seq=before.seq,
            kinds=scenario.flood_kinds,
        )
    )  # fmt: skip
    plan = [(token, (topic,)) for token in wedding.tokens[:members]]
    group = WorkerGroup(
        target.ws_url, plan, scenario.processes, source_addresses=target.source_addresses
    )
    planner = PlannerTraffic(
        target.ws_url, wedding.tokens[0], topic, wedding.supplier_ids[0], timeline
    )
    await group.start()
    run.status = lambda: _status(group, planner, flood)
    run.start_background()
    try:
        await flood.start()
        run.say(f"opening {len(plan)} receiver connections in {group.size} process(es)")
        opened = merge_open(await group.open())
        await planner.connect()
        run.say(
            f"{opened['succeeded']}/{opened['attempted']} members subscribed; the planner "
            f"publishes {scenario.rate:g}/s and user {flooder_user} floods from "
            f"{scenario.flood_connections} connections and {scenario.flood_http} HTTP "
            f"clients for {scenario.duration:g} s"
        )
        await group.call("window", None)
        start = run.mark()
        flood.go()
        published = await planner.run(scenario.rate, scenario.duration)
        flooded = await flood.result()
        flood_end = run.mark()
        finals = await asyncio.to_thread(final_seqs, [topic])
        totals, drain_s = merge_totals(await group.call("finish", finals, scenario.drain_timeout))
        end = run.mark()
        usage = run.usage(start, flood_end)
    finally:
        await planner.close()
        counters = merge_counters(await group.close())
        await run.stop_background()
        await flood.stop()
    run.say("checking the event log, the budgets, the overdue check and retention")
    checked = await _check(scenario, run, wedding, flooder_user, planner_user, before,
                           flooded, finals[topic], published.ok)  # fmt: skip
    delivered = deliveries(totals, (flood_end - start) + drain_s)
    checks = {
        "no_loss": not (totals.missing or totals.duplicates or totals.out_of_order),
        "flooder_limited": flooder_limited(flooded),
        **checked.pop("checks"),
    }
    return {
        "connections": {**opened, "publishers": 1},
        "publishes": {**published.as_dict(),
                      "by_event": {e: dict(c) for e, c in planner.by_event.items()}},
        "deliveries": delivered,
        "drain_s": round(drain_s, 3),
        "measured_s": round(end - start, 3),
        "server_usage": usage,
        "receivers": counters,
        "wedding": {"id": wedding.id, "topic": topic, "members": members,
                    "flooder_user_id": flooder_user, "planner_user_id": planner_user,
                    "real_history_written": written},
        "flood": flooded,
        **checked,
        "checks": checks,
        "passed": all(v for v in checks.values() if v is not None),
    }  # fmt: skip


async def _check(scenario: HostileMember, run: Run, wedding: WeddingLogins, flooder_user: int,
                 planner_user: int, before: integrity.History, flooded: dict[str, Any],
                 final_seq: int, planner_ok: int) -> dict[str, Any]:  # fmt: skip
    topic = wedding.topic
    after = await asyncio.to_thread(integrity.history, topic, flooder_user)
    stored = await asyncio.to_thread(integrity.flooder_stored, topic, flooder_user, before.seq)
    planner = await asyncio.to_thread(integrity.planner_stored, topic, planner_user, before.seq)
    limits = limits_report(flooded, stored, budget_values(run.target.server.get("env")), final_seq)
    compared = integrity.compare(before, after)
    out: dict[str, Any] = {
        "limits": limits,
        "flooder_stored": stored,
        "planner_stored": planner,
        "history": {"before": before.as_dict(), "after": after.as_dict(), "compare": compared},
    }
    checks: dict[str, bool | None] = {
        "within_budgets": all(row["within"] for row in limits),
        "real_history_intact": compared["intact"],
        "planner_publishes_stored": sum(planner.values()) == planner_ok,
    }
    if not run.target.server.get("started"):
        reason = "skipped: it acts on every wedding of the database; only on a started server"
        out["overdue"] = out["prune"] = {"skipped": reason}
        checks["at_most_one_overdue_alert"] = checks["nothing_pruned"] = None
        out["checks"] = checks
        return out
    overdue = await asyncio.to_thread(integrity.overdue_check, topic)
    latest = await asyncio.to_thread(integrity.history, topic, flooder_user)
    pruned = await asyncio.to_thread(integrity.prune, topic, flooder_user, latest)
    out["overdue"], out["prune"] = overdue, pruned
    checks["at_most_one_overdue_alert"] = overdue["alerts_opened"] <= 1
    checks["nothing_pruned"] = pruned["history"]["intact"]
    if scenario.prune_at:
        pressed = await asyncio.to_thread(
            integrity.prune, topic, flooder_user, latest, scenario.prune_at
        )
        out["pressure_prune"] = pressed
        kept = pressed["history"]
        checks["state_kept_under_pressure"] = not (
            kept["open_emergencies_missing"] or kept["latest_statuses_missing"]
        )
    out["checks"] = checks
    return out


def _status(group: WorkerGroup, planner: PlannerTraffic, flood: FloodProcess) -> str:
    p = group.summed_progress()
    f = flood.live_counts()
    return (
        f"members {p.get('live', 0)} | planner published {planner.ok} | delivered "
        f"{p.get('received', 0)} dup {p.get('duplicates', 0)} | flood sent {f['sent']} "
        f"ok {f['ok']} limited {f['limited']} closes {f['closes']} connects {f['connects']}"
    )
