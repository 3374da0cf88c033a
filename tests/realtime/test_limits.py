"""Publish rate limit and strikes (realtime/limits.py; PROTOCOL §7, §8)."""

from __future__ import annotations

import pytest
from django.test import override_settings

from realtime.errors import RealtimeError
from realtime.limits import PublishLimiter, TokenBucket, is_critical


def _allowed(bucket: TokenBucket, n: int, now: float) -> int:
    return sum(bucket.allow(now) for _ in range(n))


# --- TokenBucket -----------------------------------------------------------------------------


def test_token_bucket__allows_the_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=20, burst=40)

    assert _allowed(bucket, 40, now=100.0) == 40
    assert bucket.allow(100.0) is False


def test_token_bucket__refills_at_rate() -> None:
    # given: an empty bucket
    bucket = TokenBucket(rate=20, burst=40)
    _allowed(bucket, 40, now=100.0)

    # when: 0.5 s passes, 10 tokens come back
    assert _allowed(bucket, 20, now=100.5) == 10

    # then: and one more every 1/20 s
    assert bucket.allow(100.5) is False
    assert bucket.allow(100.55) is True
    assert bucket.allow(100.55) is False


def test_token_bucket__never_holds_more_than_the_burst() -> None:
    bucket = TokenBucket(rate=20, burst=40)
    bucket.allow(0.0)

    assert _allowed(bucket, 100, now=3600.0) == 40


def test_token_bucket__a_clock_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.allow(10.0) is True

    assert bucket.allow(5.0) is False
    assert bucket.allow(10.5) is False
    assert bucket.allow(11.0) is True


def test_token_bucket__sustained_rate_is_the_rate() -> None:
    # given: a client sending 100 frames a second for 10 s against 20/s, burst 40
    bucket = TokenBucket(rate=20, burst=40)

    allowed = sum(bucket.allow(i / 100) for i in range(1000))

    # then: the burst plus 20 a second
    assert 40 + 20 * 10 - 2 <= allowed <= 40 + 20 * 10


def test_token_bucket__uses_the_monotonic_clock_by_default() -> None:
    bucket = TokenBucket(rate=1000, burst=2)

    assert bucket.allow() and bucket.allow()
    assert bucket.retry_after() <= 0.001


def test_token_bucket__refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)


# --- PublishLimiter --------------------------------------------------------------------------


def test_publish_limiter__defaults_from_settings__20_per_second_burst_40() -> None:
    limiter = PublishLimiter()

    for _ in range(40):
        limiter.check("message.posted", now=0.0)
    with pytest.raises(RealtimeError) as info:
        limiter.check("message.posted", now=0.0)

    assert info.value.code == "rate_limited"
    assert info.value.extra == {"retry_after_ms": 50}
    # 1/20 s later there is room for one more
    limiter.check("message.posted", now=0.05)


@override_settings(REALTIME_PUBLISH_RATE=1.0, REALTIME_PUBLISH_BURST=2)
def test_publish_limiter__reads_settings_when_made() -> None:
    limiter = PublishLimiter()
    limiter.check("vendor.status", now=0.0)
    limiter.check("vendor.status", now=0.0)

    with pytest.raises(RealtimeError):
        limiter.check("vendor.status", now=0.5)
    limiter.check("vendor.status", now=1.0)


@pytest.mark.parametrize("event", ["emergency.raised", "emergency.resolved"])
def test_publish_limiter__critical_events_are_never_limited(event: str) -> None:
    # given: the bucket is empty
    limiter = PublishLimiter(rate=1, burst=1, strikes=3)
    limiter.check("message.posted", now=0.0)

    # when: many emergencies at once
    for _ in range(500):
        limiter.check(event, now=0.0)

    # then: none refused, no strike, and they took no token from normal events
    assert limiter.should_close is False
    limiter.check("message.posted", now=1.0)


def test_publish_limiter__only_emergencies_are_critical() -> None:
    assert is_critical("emergency.raised")
    assert not is_critical("message.posted")
    assert not is_critical("emergency")
    assert not is_critical("timeline.emergency.raised")
    assert is_critical("emergency.resolved")
    assert not is_critical("emergency.bogus")


def test_publish_limiter__repeated_refusals_set_should_close() -> None:
    # given: an empty bucket
    limiter = PublishLimiter(rate=1, burst=1, strikes=5, window=10)
    limiter.check("message.posted", now=0.0)

    # when: 4 refusals
    for i in range(4):
        with pytest.raises(RealtimeError):
            limiter.check("message.posted", now=0.1 * i)
        assert limiter.should_close is False

    # then: the 5th within the window closes
    with pytest.raises(RealtimeError):
        limiter.check("message.posted", now=0.5)
    assert limiter.should_close is True


def test_publish_limiter__refusals_spread_beyond_the_window_do_not_close() -> None:
    limiter = PublishLimiter(rate=1, burst=1, strikes=3, window=10)

    # one refusal every 6 s: never 3 within 10 s
    for t in range(0, 120, 6):
        limiter.check("message.posted", now=float(t))
        with pytest.raises(RealtimeError):
            limiter.check("message.posted", now=float(t))

    assert limiter.should_close is False


def test_publish_limiter__default_strikes__an_outbox_flush_is_not_closed() -> None:
    # given: a phone flushes 80 frames queued offline, all at once (defaults: 40 burst, 50
    # strikes in 10 s)
    limiter = PublishLimiter()
    refused = 0
    for _ in range(80):
        try:
            limiter.check("vendor.status", now=0.0)
        except RealtimeError:
            refused += 1

    assert refused == 40
    assert limiter.should_close is False


def test_publish_limiter__default_strikes__a_flood_is_closed_within_seconds() -> None:
    # given: 100 frames a second: the burst lasts 0.5 s, then 4 frames in 5 are refused
    limiter = PublishLimiter()
    t = 0.0
    while not limiter.should_close:
        try:
            limiter.check("message.posted", now=t)
        except RealtimeError:
            pass
        t += 0.01
        assert t < 1.5
    assert t > 1.0


def test_publish_limiter__zero_strikes_never_closes() -> None:
    limiter = PublishLimiter(rate=1, burst=1, strikes=0)
    limiter.check("message.posted", now=0.0)
    for _ in range(100):
        with pytest.raises(RealtimeError):
            limiter.check("message.posted", now=0.0)

    assert limiter.should_close is False
