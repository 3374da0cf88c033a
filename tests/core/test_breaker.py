"""CircuitBreaker: closed → open → half-open → closed, sync and async, with a fake clock."""

from __future__ import annotations

import logging
import threading

import pytest

from core.breaker import CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def boom() -> None:
    raise ConnectionError("down")


def make(clock: Clock, **kwargs) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        name="test", clock=clock, on_change=lambda a, b: changes.append((a, b)), **kwargs
    )
    return breaker, changes


def test_breaker__opens_after_threshold_failures_and_fails_fast() -> None:
    breaker, changes = make(Clock())
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    assert breaker.state == "closed"

    with pytest.raises(ConnectionError):
        breaker.call(boom)

    assert breaker.state == "open"
    called = []
    with pytest.raises(CircuitOpen):
        breaker.call(called.append, 1)
    assert called == []
    assert changes == [("closed", "open")]


def test_breaker__success_resets_the_failure_count() -> None:
    breaker, _ = make(Clock())
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    assert breaker.call(lambda: 7) == 7
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    assert breaker.state == "closed"


def test_breaker__half_open_probe_success_closes(caplog: pytest.LogCaptureFixture) -> None:
    # given an open breaker
    clock = Clock()
    breaker, changes = make(clock, failure_threshold=1, reset_timeout=5)
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    # when the cool-down passes and a probe succeeds
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        breaker.call(lambda: 1)
    clock.now += 0.2
    assert breaker.state == "half-open"
    with caplog.at_level(logging.WARNING, logger="core.breaker"):
        assert breaker.call(lambda: "ok") == "ok"
    # then it is closed again, and each change was logged
    assert breaker.state == "closed"
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    assert "circuit breaker test: half-open -> closed" in caplog.text


def test_breaker__half_open_probe_failure_reopens_for_another_timeout() -> None:
    clock = Clock()
    breaker, changes = make(clock, failure_threshold=3, reset_timeout=5)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    clock.now += 5
    with pytest.raises(ConnectionError):
        breaker.call(boom)  # one failed probe is enough to reopen

    assert breaker.state == "open"
    clock.now += 4
    with pytest.raises(CircuitOpen):
        breaker.call(lambda: 1)
    assert changes[-1] == ("half-open", "open")


def test_breaker__only_one_probe_at_a_time_in_half_open() -> None:
    clock = Clock()
    breaker, _ = make(clock, failure_threshold=1, reset_timeout=1)
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    clock.now += 1
    inside, release, results = threading.Event(), threading.Event(), []

    def slow_probe() -> str:
        inside.set()
        release.wait(5)
        return "probe"

    thread = threading.Thread(target=lambda: results.append(breaker.call(slow_probe)))
    thread.start()
    inside.wait(5)
    with pytest.raises(CircuitOpen):
        breaker.call(lambda: "second")
    release.set()
    thread.join(5)
    assert results == ["probe"]
    assert breaker.state == "closed"


def test_breaker__exceptions_outside_failure_exceptions_do_not_count() -> None:
    breaker, _ = make(Clock(), failure_threshold=1, failure_exceptions=(ConnectionError,))
    with pytest.raises(ValueError):
        breaker.call(lambda: int("x"))
    assert breaker.state == "closed"


def test_breaker__failing_on_change_hook_does_not_break_calls() -> None:
    def hook(_old: str, _new: str) -> None:
        raise RuntimeError("metrics down")

    breaker = CircuitBreaker(failure_threshold=1, clock=Clock(), on_change=hook)
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    assert breaker.state == "open"


async def test_breaker__acall_opens_fails_fast_and_recovers() -> None:
    clock = Clock()
    breaker, changes = make(clock, failure_threshold=2, reset_timeout=5)

    async def down() -> None:
        raise ConnectionError("down")

    async def up(x: int) -> int:
        return x * 2

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.acall(down)
    with pytest.raises(CircuitOpen):
        await breaker.acall(up, 1)
    clock.now += 5
    assert await breaker.acall(up, 21) == 42
    assert breaker.state == "closed"
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_breaker__a_threshold_function_is_read_when_a_failure_is_counted() -> None:
    # given a threshold that drops from 3 to 1 (wedding-day mode switched on meanwhile)
    threshold = {"now": 3}
    breaker, _ = make(Clock(), failure_threshold=lambda: threshold["now"])
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    assert breaker.state == "closed"

    # when the next failure is counted under the lower threshold
    threshold["now"] = 1
    with pytest.raises(ConnectionError):
        breaker.call(boom)

    # then it opens
    assert breaker.state == "open"
