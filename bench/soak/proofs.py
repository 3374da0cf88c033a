"""What the soak proves at the end, from its measurements, and the table it prints.

Three proofs, each ``{"passed": bool, "failures": [...], ...}``; the soak passes when
all three do:

* **delivery**: every receiver subscribed and, at the end of the drain, had every seq of
  its topic after the subscribe position up to the topic's final seq in the event log,
  each once (no duplicate) and in order (none after a higher one), with no replay that
  could not cover its ``since`` (a reset); every acknowledged publish's seq is at most
  its topic's final seq and no seq was acknowledged twice. Receivers whose connection
  dropped (the worker kill) reconnected with ``since``: their streams count like the rest.
* **memory**: every server process judged stayed within the RSS bound (``memory``).
* **alerts**: each fault that must raise an alert did (an alert of that rule opened, or
  was still open, between the fault and the next one), and every alert opened during the
  soak was resolved by the end. A fault that raises none by design says why.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from django.db import close_old_connections, connection

from monitoring import services
from monitoring.models import Alert


def resolve_leftovers() -> list[dict[str, Any]]:
    """Resolve alerts an earlier run left open (a scratch database): the soak's alerts
    must be its own. Returns what was resolved."""
    try:
        left = list(Alert.objects.filter(resolved_at__isnull=True))
        for alert in left:
            services.alert_resolve(alert_id=alert.pk, user=None)  # by no staff member
        return [_alert_row(a) for a in left]
    finally:
        close_old_connections()
        connection.close()


def alerts_since(started_wall: float) -> list[dict[str, Any]]:
    """Every alert opened since the soak started, oldest first."""
    since = dt.datetime.fromtimestamp(started_wall, tz=dt.UTC)
    try:
        rows = Alert.objects.filter(opened_at__gte=since).order_by("opened_at", "pk")
        return [_alert_row(a) for a in rows]
    finally:
        close_old_connections()
        connection.close()


def _alert_row(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.pk,
        "rule": alert.rule,
        "subject": alert.subject,
        "severity": alert.severity,
        "value": alert.value,
        "message": alert.message,
        "opened": alert.opened_at.timestamp(),
        "resolved": alert.resolved_at.timestamp() if alert.resolved_at else None,
    }


def delivery_proof(result: dict[str, Any]) -> dict[str, Any]:
    conns, dl = result["connections"], result["deliveries"]
    failures = []
    if conns["succeeded"] != conns["attempted"]:
        failures.append(f"{conns['attempted'] - conns['succeeded']} receivers never subscribed")
    if dl["streams"] != conns["succeeded"]:
        failures.append(f"{dl['streams']} streams for {conns['succeeded']} receivers")
    for name in ("missing", "duplicates", "out_of_order"):
        if dl[name]:
            failures.append(f"deliveries {name.replace('_', ' ')}: {dl[name]}")
    if result["receivers"].get("resets"):
        failures.append(f"{result['receivers']['resets']} replays did not cover since")
    acked_total, twice, beyond = 0, 0, 0
    stored = 0
    for topic, seqs in result["acked"].items():
        acked_total += len(seqs)
        twice += sum(n - 1 for n in Counter(seqs).values() if n > 1)
        beyond += sum(1 for s in seqs if s > result["finals"][topic])
    for topic, final in result["finals"].items():
        stored += final - result["starts"].get(topic, 0)
    if acked_total != result["publishes"]["ok"]:
        failures.append(f"{acked_total} seqs kept for {result['publishes']['ok']} acks")
    if twice:
        failures.append(f"{twice} seqs acknowledged twice")
    if beyond:
        failures.append(f"{beyond} acknowledged seqs beyond their topic's final seq")
    if not dl["expected"]:
        failures.append("nothing was expected: no event was stored")
    return {
        "passed": not failures,
        "failures": failures,
        "acknowledged": acked_total,
        "stored": stored,
        "stored_not_acknowledged": stored - acked_total,
        "expected": dl["expected"],
        "received": dl["received"],
        "missing": dl["missing"],
        "duplicates": dl["duplicates"],
        "out_of_order": dl["out_of_order"],
        "receivers": conns["succeeded"],
        "reconnects": result["receivers"].get("reconnects", 0),
    }


def memory_proof(rows: list[dict[str, Any]]) -> dict[str, Any]:
    over = [r for r in rows if r["judged"] and not r["within"]]
    failures = [
        f"{r['role']} {r['pid']} grew {r['growth_mib']} MiB (bound {r['bound_mib']} MiB)"
        for r in over
    ]
    if not any(r["judged"] for r in rows):
        failures.append("no server process lived long enough to be judged")
    return {"passed": not failures, "failures": failures, "processes": rows}


def alert_proof(faults: list[dict[str, Any]], alerts: list[dict[str, Any]],
                ended_wall: float) -> dict[str, Any]:  # fmt: skip
    """Attribute each alert to the fault before it and check expectations."""
    failures = []
    injected = [f for f in faults if not f["skipped"]]
    rows = []
    for index, fault in enumerate(injected):
        start = fault["started"]
        end = injected[index + 1]["started"] if index + 1 < len(injected) else ended_wall
        opened = [a for a in alerts if start <= a["opened"] < end]
        open_during = [
            a for a in alerts
            if a["opened"] < end and (a["resolved"] is None or a["resolved"] >= start)
        ]  # fmt: skip
        missing = [
            rule for rule in fault["expected_alerts"]
            if not any(a["rule"] == rule for a in open_during)
        ]  # fmt: skip
        for rule in missing:
            failures.append(f"{fault['kind']} at {fault['at_s']:g}s raised no {rule} alert")
        rows.append({
            "kind": fault["kind"],
            "at_s": fault["at_s"],
            "expected": fault["expected_alerts"],
            "why_none": fault["why_no_alert"],
            "raised": [
                {"id": a["id"], "rule": a["rule"], "severity": a["severity"],
                 "opened_after_s": round(a["opened"] - start, 1),
                 "resolved_after_s": round(a["resolved"] - start, 1) if a["resolved"] else None}
                for a in opened
            ],
            "missing": missing,
        })  # fmt: skip
    before = [a for a in alerts if not injected or a["opened"] < injected[0]["started"]]
    unresolved = [a for a in alerts if a["resolved"] is None]
    for alert in unresolved:
        failures.append(f"alert {alert['rule']} (#{alert['id']}) still open at the end")
    return {
        "passed": not failures,
        "failures": failures,
        "by_fault": rows,
        "before_any_fault": [a["rule"] for a in before],
        "unresolved": [a["id"] for a in unresolved],
        "skipped_faults": [
            {"kind": f["kind"], "why": f["skipped"]} for f in faults if f["skipped"]
        ],
    }


def render(report: dict[str, Any]) -> str:
    """The table printed on stdout."""
    p, proofs = report["parameters"], report["proofs"]
    d, mem, al = proofs["delivery"], proofs["memory"], proofs["alerts"]
    pub, latency = report["publishes"], report["deliveries"]["latency"]
    lines = [
        f"soak: {p['duration']:g} s, {report['connections']['attempted']} receivers on "
        f"{p['weddings']} weddings, {p['rate']:g} publishes/s, {p['workers']} server workers "
        f"({report['world']['link']})",
        "",
        f"{'proof':<10} {'result':<6} detail",
        f"{'delivery':<10} {_ok(d)} {d['acknowledged']:,} acknowledged publishes "
        f"({d['stored']:,} stored); {d['received']:,} of {d['expected']:,} deliveries, "
        f"missing {d['missing']}, duplicated {d['duplicates']}, out of order "
        f"{d['out_of_order']}; {d['reconnects']} reconnects",
    ]
    judged = [r for r in mem["processes"] if r["judged"]]
    worst = max(judged, key=lambda r: r["growth_mib"] - r["bound_mib"], default=None)
    mem_text = (
        f"{len(judged)} processes judged; largest growth {worst['growth_mib']} MiB "
        f"({worst['growth_pct']} %) of bound {worst['bound_mib']} MiB ({worst['role']})"
        if worst
        else "nothing judged"
    )
    lines.append(f"{'memory':<10} {_ok(mem)} {mem_text}")
    lines.append(f"{'alerts':<10} {_ok(al)} {len(al['by_fault'])} faults injected, "
                 f"{len(al['unresolved'])} alerts left open")  # fmt: skip
    lines += ["", f"{'fault':<9} {'at':>7}  alerts (opened +s / resolved +s)"]
    for row in al["by_fault"]:
        raised = "; ".join(
            f"{a['rule']} {a['severity']} +{a['opened_after_s']:g}/{_resolved(a)}"
            for a in row["raised"]
        )
        if not raised:
            raised = "none" + (f" (by design: {row['why_none']})" if row["why_none"] else "")
        if row["missing"]:
            raised += f"; MISSING {', '.join(row['missing'])}"
        lines.append(f"{row['kind']:<9} {row['at_s']:>6.0f}s  {raised}")
    if al["before_any_fault"]:
        lines.append(f"{'(warm-up)':<9} {'-':>7}  {', '.join(al['before_any_fault'])}")
    for skipped in al["skipped_faults"]:
        lines.append(f"{skipped['kind']:<9} {'-':>7}  SKIPPED: {skipped['why']}")
    lines += [
        "",
        f"publishes: {pub['ok']:,} ok of {pub['sent']:,} sent, errors {pub['errors'] or 'none'}",
        f"latency p50/p99/max: {latency['p50_ms']} / {latency['p99_ms']} / {latency['max_ms']} ms",
    ]
    for proof in (d, mem, al):
        lines += [f"FAIL: {f}" for f in proof["failures"]]
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines) + "\n"


def _resolved(alert: dict[str, Any]) -> str:
    after = alert["resolved_after_s"]
    return "OPEN" if after is None else f"+{after:g}"


def _ok(proof: dict[str, Any]) -> str:
    return "pass  " if proof["passed"] else "FAIL  "
