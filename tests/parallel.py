"""pytest-xdist workers, each with services of its own (loaded with ``-p tests.parallel``).

`make test` runs the suite in ``PYTEST_WORKERS`` processes (pytest-xdist, 2 by default):
most of its time is spent waiting on server processes, browsers and sockets, not on a
core. Workers must not see each other's traffic:

* PostgreSQL: pytest-django gives each worker its own test database (``test_<name>_gw0``,
  ``test_<name>_gw1``, ...).
* Redis: the first worker keeps ``REDIS_URL``; every other worker gets a redis-server of
  its own on a free port (``tests.servers.RedisServer``, ending with the worker). Another
  database number of the same server would not do: the channel layer and presence use
  Redis pub/sub, whose channels every database of a server shares, so one worker's
  servers would deliver to the other's clients.
* Metrics: each worker its own ``PROMETHEUS_MULTIPROC_DIR`` (tests read the test
  process's counters back from it).

This module runs when pytest loads its plugins, before pytest-django reads the Django
settings, so everything that reads ``REDIS_URL`` (settings, the servers the tests start)
sees the worker's. Outside a worker (``PYTEST_WORKERS=0``, or ``pytest`` run by hand) it
does nothing.

The order of the files (``pytest_collection_modifyitems``, with ``--no-loadscope-reorder``
in the Makefile): pytest-xdist hands each worker whole files, by default the files with
the most tests first, so the few files of one long test each (the soak, the DR drill,
the multi-host run: a minute or so apiece) came last and one worker ran them alone while
the other had finished: minutes of tail. Here the files go by a guess of their time,
longest first: a test marked ``slow`` (it starts real processes) counts ``SLOW_TEST_S``
or the ``seconds`` its marker gives, any other ``TEST_S`` (docs/adr/0036).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections import defaultdict
from typing import Any

import pytest

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
# What a test is guessed to take, in seconds, for the order of the files only: one that
# starts real server processes (marker ``slow``; ``slow(seconds=70)`` for the few that
# take a minute or so), and any other.
SLOW_TEST_S, TEST_S = 10.0, 0.1
# A port taken between choosing it and redis-server binding it: another port.
REDIS_START_ATTEMPTS = 3


def _start_redis() -> str:
    """A redis-server of this worker's own (nothing on disk); its URL."""
    if shutil.which("redis-server") is None:
        raise RuntimeError(
            f"pytest-xdist worker {WORKER} needs a Redis of its own and redis-server is not "
            "installed: install it (apt-get install -y redis-server) or run the suite in "
            "one process (PYTEST_WORKERS=0 make test)"
        )
    # Imported here: only a worker that needs it loads the test helpers (no settings read).
    from tests.servers import RedisServer

    for _ in range(REDIS_START_ATTEMPTS - 1):
        try:
            redis = RedisServer(die_with_parent=True)
            break
        except RuntimeError:
            continue
    else:
        redis = RedisServer(die_with_parent=True)  # the last attempt's error is the one raised
    atexit.register(redis.kill)
    return redis.url


if WORKER is not None:
    if os.environ.get("REDIS_URL") and WORKER != "gw0":
        os.environ["REDIS_URL"] = _start_redis()
    _metrics = tempfile.mkdtemp(prefix=f"wedsync-metrics-{WORKER}-")
    atexit.register(shutil.rmtree, _metrics, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics


@pytest.hookimpl(trylast=True)  # after pytest-django's order of test kinds, kept per file
def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """The files in the order their tests are guessed to take, longest first; each file's
    tests in their own order (a file's module-scoped servers start once)."""
    by_file: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        by_file[item.nodeid.split("::", 1)[0]].append(item)

    def guess_test(item: Any) -> float:
        slow = item.get_closest_marker("slow")
        return TEST_S if slow is None else float(slow.kwargs.get("seconds", SLOW_TEST_S))

    def guess(name: str) -> float:
        return sum(guess_test(item) for item in by_file[name])

    order = sorted(by_file, key=lambda name: -guess(name))  # stable: ties keep their order
    items[:] = [item for name in order for item in by_file[name]]
