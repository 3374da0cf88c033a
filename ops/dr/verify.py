"""Check a (restored) database's event log against PROTOCOL §7, in SQL, without Django.

Per topic:

- its cursor exists and is never below the highest stored seq (a cursor below it would
  hand out a seq twice);
- the log is whole from where retention left it up to the cursor: no gap above the
  lowest "whole" seq, and below it only the kinds retention keeps whatever their age
  (open emergencies, each supplier's latest status, ``KEPT_PAST_RETENTION``); a missing
  head (cursor above the highest stored seq) only where retention has aged everything
  but such kept events out;
- with a target time, no event was created after it (plus the clock skew allowed
  between the application hosts and the database);
- no idempotency key points past the cursor.

A restore is consistent at a transaction boundary, so a gap or a cursor out of step is
a broken restore (or a broken product), never an artefact of when the primary died.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from ops.dr.pg import connect

# Mirrors realtime.selectors.KEPT_PAST_RETENTION and the realtime tables' names; no
# Django here (a restore must not need the app to start), and tests/ops/test_verify.py
# fails the moment they differ from the product's.
KEPT_PAST_RETENTION = ("emergency.raised", "vendor.status")
EVENT_TABLE = "realtime_event"
CURSOR_TABLE = "realtime_topiccursor"
IDEMPOTENCY_TABLE = "realtime_idempotencykey"

# One pass over the log: per topic its counts, the start of the run that reaches its
# newest event ("whole_from"), and what lies below that run.
_TOPICS_SQL = f"""
WITH marked AS (
    SELECT topic, seq, event, created_at,
           lag(seq) OVER (PARTITION BY topic ORDER BY seq) IS DISTINCT FROM seq - 1
               AS starts_run
    FROM {EVENT_TABLE}
),
starts AS (
    SELECT topic, count(*) AS events, min(seq) AS lowest, max(seq) AS highest,
           max(created_at) AS newest, count(*) FILTER (WHERE starts_run) - 1 AS gaps,
           max(seq) FILTER (WHERE starts_run) AS whole_from,
           bool_and(event = ANY(%(kept)s)) AS only_kept
    FROM marked GROUP BY topic
),
below AS (
    SELECT m.topic, count(*) AS below_whole,
           count(*) FILTER (WHERE NOT m.event = ANY(%(kept)s)) AS unexplained
    FROM marked m JOIN starts s ON s.topic = m.topic AND m.seq < s.whole_from
    GROUP BY m.topic
)
SELECT coalesce(s.topic, c.topic), coalesce(s.events, 0), s.lowest, s.highest, s.newest,
       coalesce(s.gaps, 0), s.whole_from, coalesce(s.only_kept, true),
       coalesce(b.below_whole, 0), coalesce(b.unexplained, 0), c.last_seq
FROM starts s
FULL JOIN {CURSOR_TABLE} c ON c.topic = s.topic
LEFT JOIN below b ON b.topic = s.topic
ORDER BY 1
"""  # noqa: S608 (the table names are this module's constants, never input)

_KEYS_PAST_CURSOR_SQL = f"""
SELECT k.topic, count(*), max(k.seq), max(c.last_seq)
FROM {IDEMPOTENCY_TABLE} k LEFT JOIN {CURSOR_TABLE} c ON c.topic = k.topic
WHERE c.last_seq IS NULL OR k.seq > c.last_seq
GROUP BY k.topic ORDER BY 1
"""  # noqa: S608  # noqa: S608 (the table names are this module's constants, never input)


@dataclass
class TopicCheck:
    """One topic's figures and what is wrong with it (nothing, when ``problems`` is empty)."""

    topic: str
    events: int
    lowest: int | None
    highest: int | None
    last_seq: int | None
    whole_from: int | None
    newest: str | None
    kept_below: int = 0  # retained-kind events below a pruned stretch (allowed)
    problems: list[str] = field(default_factory=list)


@dataclass
class Report:
    """The whole log's verdict: ``ok`` when no topic (and no key) has a problem."""

    topics: int = 0
    events: int = 0
    newest_event: str | None = None
    target_time: str | None = None
    database_bytes: int = 0
    failed: list[TopicCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def text(self) -> str:
        """The report for a person: the verdict first, then each problem."""
        lines = [
            f"event log: {'OK' if self.ok else 'FAILED'} - {self.topics} topics, "
            f"{self.events} events, newest {self.newest_event or 'none'}, database "
            f"{self.database_bytes / 1e6:.1f} MB"
            + (f", target {self.target_time}" if self.target_time else ""),
        ]
        lines += [f"  {problem}" for problem in self.problems]
        for check in self.failed:
            lines += [f"  {check.topic}: {problem}" for problem in check.problems]
        return "\n".join(lines)


def _check_topic(row: tuple, target: dt.datetime | None) -> TopicCheck:
    (
        topic,
        events,
        lowest,
        highest,
        newest,
        gaps,
        whole_from,
        only_kept,
        below,
        unexplained,
        last_seq,
    ) = row
    check = TopicCheck(
        topic=topic,
        events=events,
        lowest=lowest,
        highest=highest,
        last_seq=last_seq,
        whole_from=whole_from,
        newest=newest.isoformat() if newest else None,
        kept_below=below - unexplained,
    )
    if last_seq is None:
        check.problems.append(f"{events} events but no cursor")
        return check
    if highest is not None and last_seq < highest:
        check.problems.append(f"cursor {last_seq} below the highest stored seq {highest}")
    if unexplained:
        check.problems.append(
            f"gap below seq {whole_from} ({gaps} gap(s)) with {unexplained} event(s) under "
            f"it that retention would have pruned: events are missing"
        )
    head = highest or 0
    if last_seq > head and not only_kept:
        check.problems.append(f"seqs {head + 1}..{last_seq} missing from the head of the log")
    if target is not None and newest is not None and newest > target:
        check.problems.append(f"event created at {newest.isoformat()}, after the target")
    return check


def verify(url: str, *, target: dt.datetime | None = None, skew_s: float = 0.0) -> Report:
    """Check the event log of the database at ``url``; see the module docstring."""
    report = Report(target_time=target.isoformat() if target else None)
    limit = target + dt.timedelta(seconds=skew_s) if target else None
    newest: dt.datetime | None = None
    with connect(url) as conn:
        report.database_bytes = conn.execute(
            "SELECT pg_database_size(current_database())"
        ).fetchone()[0]
        for row in conn.execute(_TOPICS_SQL, {"kept": list(KEPT_PAST_RETENTION)}):
            check = _check_topic(row, limit)
            report.topics += 1
            report.events += check.events
            newest = max(filter(None, (newest, row[4])), default=None)
            if check.problems:
                report.failed.append(check)
        for topic, count, seq, last_seq in conn.execute(_KEYS_PAST_CURSOR_SQL):
            report.problems.append(
                f"{topic}: {count} idempotency key(s) up to seq {seq} past the cursor ({last_seq})"
            )
    report.newest_event = newest.isoformat() if newest else None
    return report
