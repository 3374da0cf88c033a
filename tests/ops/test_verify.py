"""``ops.dr verify`` against event logs built broken on purpose, in the test database.

The drill (test_dr.py) shows verify passing on real restores; these show it failing on
each way a log can be broken, and passing on what retention legitimately leaves.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from ops.dr import verify as dr_verify
from ops.dr.cli import main
from realtime import selectors
from realtime.models import Event, IdempotencyKey, TopicCursor
from tests.factories import make_user
from tests.servers import test_database_url

db = pytest.mark.django_db(transaction=True)


def log(
    topic: str,
    seqs: list[int],
    *,
    cursor: int | None = None,
    kind: str = "message.posted",
    kinds: dict[int, str] | None = None,
) -> None:
    """Store ``seqs`` of ``topic`` (``kinds`` overrides the kind per seq) and its cursor:
    at ``cursor``, at the highest seq by default, none with ``cursor=-1``."""
    for seq in seqs:
        Event.objects.create(
            topic=topic,
            seq=seq,
            event=(kinds or {}).get(seq, kind),
            payload={"text": f"{topic} {seq}"},
        )
    if cursor != -1:
        TopicCursor.objects.create(topic=topic, last_seq=max(seqs) if cursor is None else cursor)


def problems(**options) -> list[str]:
    report = dr_verify.verify(test_database_url(), **options)
    return [p for check in report.failed for p in check.problems] + report.problems


def test_verify_mirrors_the_product__retention_kinds_and_tables():
    # a drift here would make verify excuse real loss, or fail every healthy restore
    assert dr_verify.KEPT_PAST_RETENTION == selectors.KEPT_PAST_RETENTION
    assert dr_verify.EVENT_TABLE == Event._meta.db_table
    assert dr_verify.CURSOR_TABLE == TopicCursor._meta.db_table
    assert dr_verify.IDEMPOTENCY_TABLE == IdempotencyKey._meta.db_table


@pytest.mark.postgres
@db
def test_verify__whole_logs_and_what_retention_leaves__pass():
    # given whole logs, one pruned by count above kept events (an open emergency, a
    # latest status), and one aged out to its kept events (its head pruned by age)
    log("wedding:1", list(range(1, 51)))
    log("wedding:2", [3, 7, *range(9001, 9011)], kinds={3: "emergency.raised", 7: "vendor.status"})
    log("wedding:3", [4], kind="vendor.status", cursor=500)
    TopicCursor.objects.create(topic="wedding:4", last_seq=12)  # every event aged out

    # when verified, then nothing is wrong
    report = dr_verify.verify(test_database_url(), target=timezone.now())
    assert report.ok, report.text()
    assert (report.topics, report.events) == (4, 63)


@pytest.mark.postgres
@db
def test_verify__a_gap_with_ordinary_events_below__fails():
    # given events 6..9 missing between ordinary events
    log("wedding:1", [1, 2, 3, 4, 5, 10, 11, 12])

    # then verify names the gap
    [problem] = problems()
    assert "gap below seq 10" in problem and "5 event(s)" in problem


@pytest.mark.postgres
@db
def test_verify__cursor_below_the_log_or_missing__fails():
    log("wedding:1", [1, 2, 3], cursor=2)
    log("wedding:2", [1, 2], cursor=-1)

    assert problems() == ["cursor 2 below the highest stored seq 3", "2 events but no cursor"]


@pytest.mark.postgres
@db
def test_verify__head_missing_above_ordinary_events__fails():
    # given a cursor at 8 and only 1..5 stored, ordinary events that retention keeps
    log("wedding:1", [1, 2, 3, 4, 5], cursor=8)

    assert problems() == ["seqs 6..8 missing from the head of the log"]


@pytest.mark.postgres
@db
def test_verify__event_after_the_target__fails_unless_within_the_skew_allowed():
    target = timezone.now() - dt.timedelta(seconds=10)
    log("wedding:1", [1, 2])

    [problem] = problems(target=target)
    assert "after the target" in problem
    assert problems(target=target, skew_s=60) == []


@pytest.mark.postgres
@db
def test_verify__idempotency_key_past_the_cursor__fails():
    log("wedding:1", [1, 2])
    IdempotencyKey.objects.create(user=make_user(), key="k", topic="wedding:1", seq=3)

    assert problems() == ["wedding:1: 1 idempotency key(s) up to seq 3 past the cursor (2)"]


@pytest.mark.postgres
@db
def test_verify_command__exit_1_and_the_report_on_a_broken_log(capsys):
    log("wedding:1", [1, 2, 4])

    code = main(["verify", "--dsn", test_database_url()])

    assert code == 1
    out = capsys.readouterr().out
    assert out.startswith("event log: FAILED - 1 topics, 3 events")
    assert "wedding:1: gap below seq 4" in out


def test_verify_command__a_time_without_offset__refused(capsys):
    # a guessed zone on a target silently restores (or checks) the wrong hour
    with pytest.raises(SystemExit) as exited:
        main(
            ["verify", "--dsn", "postgresql://x@127.0.0.1:1/x", "--target-time", "2026-05-23T14:05"]
        )
    assert exited.value.code == 2
    assert "give a UTC offset" in capsys.readouterr().err
