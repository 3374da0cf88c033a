"""Scheduling an endpoint's retries: one run per endpoint and due time, to the millisecond."""

from __future__ import annotations

import datetime as dt

import pytest

from webhooks import tasks


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], dt.datetime]]:
    """The runs handed to Celery (the dedupe in front of it uses the real cache)."""
    calls: list[tuple[list[int], dt.datetime]] = []
    monkeypatch.setattr(
        tasks.deliver_endpoint, "apply_async", lambda args, eta: calls.append((args, eta))
    )
    return calls


def test_schedule__a_retry_due_again_at_the_same_time_is_queued_once(queued):
    # given: a topic waiting for its retry, and kicks that find it still waiting
    at = dt.datetime.now(dt.UTC).replace(microsecond=250_000) + dt.timedelta(seconds=30)

    # when
    tasks.schedule(9001, at=at)
    tasks.schedule(9001, at=at)
    tasks.schedule(9001, at=at)

    # then
    assert queued == [([9001], at)]


def test_schedule__retries_due_within_one_second_each_get_their_run(queued):
    # given: two topics of one endpoint, the second due half a second after the first
    first = dt.datetime.now(dt.UTC).replace(microsecond=100_000) + dt.timedelta(seconds=40)
    second = first + dt.timedelta(milliseconds=500)

    # when: the run at the first returns the second's retry time
    tasks.schedule(9002, at=first)
    tasks.schedule(9002, at=second)

    # then: both are queued (keyed by the second alone, the second topic would stall
    # until the sweep)
    assert queued == [([9002], first), ([9002], second)]
