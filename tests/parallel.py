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
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
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
