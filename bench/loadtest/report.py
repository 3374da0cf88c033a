"""The report of a run: a table for a person, JSON for the record (docs/benchmarks.md).

A report is a plain dict: ``header()`` (scenario, parameters, machine, server) merged
with what the scenario's runner returned. ``render()`` turns it into text tables;
``write_json()`` writes it whole.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

import orjson


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: how busy the (shared) machine was."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_at_start": load_average(),
    }


def header(scenario: Any, server: dict[str, Any]) -> dict[str, Any]:
    return {
        "scenario": scenario.name,
        "parameters": scenario.as_dict(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "server": server,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "none"
    return str(value)


def _latency(lat: dict[str, Any] | None) -> str:
    if not lat or not lat.get("count"):
        return "n/a"
    return (
        f"p50 {_fmt(lat['p50_ms'])} / p95 {_fmt(lat['p95_ms'])} / p99 {_fmt(lat['p99_ms'])} / "
        f"max {_fmt(lat['max_ms'])} ms ({_fmt(lat['count'])} samples)"
    )


def _usage(usage: dict[str, Any] | None) -> str:
    if not usage:
        return "n/a"
    return (
        f"CPU {_fmt(usage.get('cpu_percent'))} % of a core, RSS max "
        f"{_fmt(usage.get('rss_max_mib'))} MiB"
    )


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The key figures as (label, value) rows, whatever the scenario."""
    server = report["server"]
    rows = [
        ("scenario", report["scenario"]),
        ("server", f"{server['kind']}, channel layer {server['channel_layer']}, "
                   f"database {server['database']}"),
        ("generator", f"{report['parameters'].get('processes', 1)} process(es) + the "
                      f"coordinator; event loop {report.get('coordinator_loop') or 'n/a'}"),
    ]  # fmt: skip
    rows += _connection_rows(report.get("connections") or {})
    rows += _publish_rows(report.get("publishes"))
    rows += _delivery_rows(report.get("deliveries"))
    rows += _storm_rows(report.get("storm"))
    rows += _request_rows(report.get("requests"))
    if "max_deliveries_per_s" in report:
        rows.append(("highest passing deliveries/s", _fmt(report["max_deliveries_per_s"])))
    if "baseline_rss_mib" in report:
        rows.append(("server RSS before connections", f"{_fmt(report['baseline_rss_mib'])} MiB"))
    if report.get("hold"):
        held = ", ".join(f"{h['at_s']} s: {_fmt(h['rss_mib'])}" for h in report["hold"])
        rows.append(("server RSS while held, MiB", held))
    if report.get("server_usage"):
        rows.append(("server", _usage(report["server_usage"])))
    rows += _receiver_rows(report.get("receivers") or {})
    rows += _hostile_rows(report)
    if "capacity_per_s" in report:
        rows.append(("capacity (measured)", f"{_fmt(report['capacity_per_s'])} publishes/s"))
        rows.append(("offered", f"{_fmt(report['offered_per_s'])} publishes/s"))
    rows.append(("elapsed", f"{_fmt(report.get('elapsed_s'))} s"))
    return rows


Rows = list[tuple[str, str]]


def _connection_rows(conns: dict[str, Any]) -> Rows:
    if not conns:
        return []
    text = f"{_fmt(conns.get('succeeded'))} of {_fmt(conns.get('attempted'))} succeeded"
    if conns.get("failures"):
        text += f" (failed: {_fmt(conns['failures'])})"
    if conns.get("publishers"):
        text += f"; + {conns['publishers']} publisher connections"
    if conns.get("rate_per_s"):
        text += f"; {_fmt(conns['rate_per_s'])} connects/s"
    return [("connections", text)]


def _publish_rows(pub: dict[str, Any] | None) -> Rows:
    if not pub:
        return []
    text = f"{_fmt(pub['ok'])} ok of {_fmt(pub['scheduled'])} scheduled"
    text += f" (sent at {_fmt(pub['rate_sent'])}/s)"
    if pub["errors"] or pub["skipped"]:
        text += f"; errors {_fmt(pub['errors'])}, skipped {pub['skipped']}"
    return [("publishes", text), ("publish reply", _latency(pub["reply_latency"]))]


def _delivery_rows(dl: dict[str, Any] | None) -> Rows:
    if not dl:
        return []
    return [
        ("deliveries expected", _fmt(dl["expected"])),
        ("deliveries received", _fmt(dl["received"])),
        ("lost", f"{_fmt(dl['missing'])} ({dl['loss'] * 100:.3f} %)"),
        ("duplicated", _fmt(dl["duplicates"])),
        ("out of order", _fmt(dl["out_of_order"])),
        ("deliveries/s", _fmt(dl["per_s"])),
        ("latency", _latency(dl["latency"])),
    ]


def _storm_rows(storm: dict[str, Any] | None) -> Rows:
    if not storm:
        return []
    return [
        ("storm: dropped / recovered", f"{storm['dropped']} / {storm['recovered']}"),
        ("storm: all have every event after",
         f"{_fmt(storm['all_recovered_s'])} s" if storm["all_recovered_s"] is not None
         else "not all recovered"),
        ("storm: per client (ms)", _latency(storm["recovered_ms"])),
        ("storm: reconnected (ms)", _latency(storm["reconnected_ms"])),
        ("storm: server", _usage(storm["server_usage"])),
    ]  # fmt: skip


def _request_rows(req: dict[str, Any] | None) -> Rows:
    if not req:
        return []
    return [
        ("requests", f"{_fmt(req['ok'])} ok of {_fmt(req['sent'])} "
                     f"({_fmt(req['per_s'])}/s); statuses {_fmt(req['statuses'])}"),
        ("latency", _latency(req["latency"])),
        ("cache hit ratio", _fmt(req["cache_hit_ratio"])
         if req["cache_hit_ratio"] is not None else f"n/a ({req['cache_hit_ratio_note']})"),
    ]  # fmt: skip


def _receiver_rows(rx: dict[str, Any]) -> Rows:
    rows: Rows = []
    hosts = rx.get("source_hosts") or {}
    if len(hosts) > 1:  # --source-addresses: where the connections came from
        rows.append(("connected from", ", ".join(f"{h} {_fmt(n)}" for h, n in hosts.items())))
    if not (rx.get("reconnects") or rx.get("server_closes") or rx.get("errors")
            or rx.get("resets")):  # fmt: skip
        return rows
    text = (
        f"reconnects {rx.get('reconnects', 0)}, server closes "
        f"{_fmt(rx.get('server_closes'))}, errors {_fmt(rx.get('errors'))}, "
        f"resets {rx.get('resets', 0)}"
    )
    return [*rows, ("receivers", text)]


def _hostile_rows(report: dict[str, Any]) -> Rows:
    """hostile-member: the flood, what it got stored, the history and the alert checks."""
    flood = report.get("flood")
    if not flood:
        return []
    ws, kinds = flood["ws"], flood["kinds"].values()
    limited = sum(k.get("rate_limited", 0) for k in kinds)
    stored = report["flooder_stored"]
    compared = report["history"]["compare"]
    rows = [
        ("flooder", f"user {report['wedding']['flooder_user_id']}: {ws['connections']} "
                    f"WebSocket connections + {flood['http']['clients']} HTTP clients for "
                    f"{_fmt(flood['seconds'])} s"),
        ("flood: sent", f"{_fmt(sum(k['sent'] for k in kinds))} frames and requests, "
                        f"{_fmt(sum(k.get('ok', 0) for k in kinds))} ok, {_fmt(limited)} "
                        "rate_limited (HTTP 429 included)"),
        ("flood: connections", f"{_fmt(ws['connects'])} opened ({_fmt(ws['reconnects'])} "
                               f"reconnects); server closes {_fmt(ws['server_closes'])}; "
                               f"failed handshakes {_fmt(ws['handshake_failures'])}"),
        ("flooder stored", f"{_fmt(stored['events'])}; {_fmt(stored['acks'])} acks, "
                           f"{_fmt(stored['ack_updated_events'])} ack.updated"),
        ("real history after the flood", _history_text(compared)),
    ]  # fmt: skip
    overdue = report.get("overdue") or {}
    if "skipped" in overdue:
        rows.append(("overdue-ack check", overdue["skipped"]))
    elif overdue:
        rows.append(("overdue-ack check", (
            f"{overdue['alerts_opened']} alert(s) for the wedding ({overdue['severity']}), "
            f"{overdue['planner_notices']} planner notices, {overdue['planner_emails']} "
            f"e-mails; run as at +{'/'.join(str(m) for m in overdue['simulated_minutes'])} min"
        )))  # fmt: skip
    for key, label in (("prune", "retention"), ("pressure_prune", "retention at --prune-at")):
        pruned = report.get(key) or {}
        if "skipped" in pruned:
            rows.append((label, pruned["skipped"]))
        elif pruned:
            rows.append((label, (
                f"{_fmt(pruned['deleted_on_topic'])} events deleted on the topic "
                f"({_fmt(pruned['deleted_in_database'])} in the database); "
                + _history_text(pruned["history"])
            )))  # fmt: skip
    checks = report.get("checks") or {}
    rows.append(("checks", ", ".join(
        f"{name} {'n/a' if ok is None else ('pass' if ok else 'FAIL')}"
        for name, ok in checks.items()
    )))  # fmt: skip
    rows.append(("result", "pass" if report.get("passed") else "FAIL"))
    return rows


def _history_text(compared: dict[str, Any]) -> str:
    text = (
        f"{'intact' if compared['intact'] else 'NOT intact'}: "
        f"{_fmt(compared['real_events_before'])} real events before, "
        f"{_fmt(compared['missing'])} missing"
    )
    if compared["missing"]:
        text += f" ({_fmt(compared['missing_by_kind'])})"
    return text + (
        f"; open emergencies missing {compared['open_emergencies_missing']} of "
        f"{compared['open_emergencies_before']}, latest statuses missing "
        f"{compared['latest_statuses_missing']} of {compared['latest_statuses_before']}"
    )


def table(headings: list[str], rows: list[list[Any]]) -> str:
    """A plain text table, columns padded to their widest cell."""
    cells = [headings] + [[_fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headings))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def render(report: dict[str, Any]) -> str:
    """The whole report as text: the summary, then steps or levels if there are any."""
    parts = [table(["measure", "value"], [list(r) for r in summary_rows(report)])]
    if report.get("steps"):
        parts.append(
            table(
                ["step", "pub/s", "deliveries/s", "p50 ms", "p99 ms", "max ms", "lost", "dup",
                 "ooo", "server CPU %", "result"],
                [[s["step"], s["rate"], s["deliveries_per_s"], s["p50_ms"], s["p99_ms"],
                  s["max_ms"], s["missing"], s["duplicates"], s["out_of_order"],
                  s["server_usage"].get("cpu_percent"),
                  "pass" if s["passed"] else "FAIL: " + s["reason"]] for s in report["steps"]],
            )
        )  # fmt: skip
    if report.get("levels"):
        parts.append(
            table(
                ["open", "failed", "connects/s", "connect p99 ms", "server RSS MiB",
                 "KiB/connection", "server CPU % while connecting"],
                [[r["open"], sum(r["failures"].values()), r["connect_rate_per_s"],
                  r["connect_p99_ms"], r["rss_mib"], r["per_connection_kib"],
                  r["server_cpu_connecting"]] for r in report["levels"]],
            )
        )  # fmt: skip
    if report.get("flood"):
        parts.append(_flood_table(report))
    if report.get("classes"):
        parts.append(_class_table(report["classes"]))
    return "\n\n".join(parts)


def _class_table(classes: dict[str, Any]) -> str:
    """overload: each priority class's publishes and latencies."""
    rows = []
    for name, c in classes.items():
        reply, delivery = c["reply_latency"], c["delivery_latency"]
        rows.append(
            [name, c["sent"], c["ok"], c["errors"] or "", reply["p50_ms"], reply["p99_ms"],
             delivery["count"], delivery["p50_ms"], delivery["p99_ms"], delivery["max_ms"]]
        )  # fmt: skip
    return table(
        ["class", "sent", "ok", "errors", "reply p50 ms", "reply p99 ms", "delivered",
         "delivery p50 ms", "delivery p99 ms", "delivery max ms"],
        rows,
    )  # fmt: skip


def _flood_table(report: dict[str, Any]) -> str:
    """hostile-member: the flooder's outcomes per kind, then its budgets."""
    kinds = report["flood"]["kinds"]
    rows = [
        [kind, k["sent"], k.get("ok", 0), k.get("rate_limited", 0),
         {o: n for o, n in k.items() if o not in ("sent", "ok", "rate_limited")}]
        for kind, k in kinds.items()
    ]  # fmt: skip
    parts = [table(["flooder's kind", "sent", "ok", "rate_limited", "other outcomes"], rows)]
    limits = report.get("limits") or []
    parts.append(
        table(
            ["budget", "counted", "rate/s", "burst", "observed", "at most", "within"],
            [[r["budget"], r["what"], r["rate_per_s"], r["burst"], r["observed"], r["bound"],
              r["within"]] for r in limits],
        )
    )  # fmt: skip
    return "\n\n".join(parts)


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
