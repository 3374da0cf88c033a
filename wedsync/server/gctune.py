"""Garbage-collector settings for a server process (docs/adr/0010-fast-delivery-path.md).

A server process holds a large, long-lived heap: Django's modules, app registry and
URL conf, and then its connections. CPython's full collections walk all of it and
stop the event loop meanwhile: with 1,000 connections held, 100-230 ms pauses every
few seconds, a floor under the delivery p99 whatever the message rate (measured with
the load benchmark, docs/benchmarks.md). Two settings, applied once after start-up:

* ``gc.freeze()`` after a collection: what start-up built moves to the permanent
  generation, which no later collection walks (it is freed by reference counting as
  usual, only never scanned for cycles; nothing is frozen that a cycle could leak,
  the collection before it took those);
* thresholds ``1500,10,100``: a young collection's pause grows with its threshold
  (~1 ms at 1,500, ~10 ms at 7,000), so the first stays small; the last makes a
  full collection of the remaining (connection-sized) heap rare, minutes apart.

And the interpreter's thread switch interval (``SERVER_SWITCH_INTERVAL_MS``, CPython's
5 ms by default): how long the event loop may wait for the GIL while the database and
request threads run Python. 1 ms took a flooded wedding's delivery p99 from 57-58 to
37-44 ms in one hostile-member sitting and made it worse in another, with no gain at the
Saturday peak (docs/benchmarks.md): the default stays CPython's.
"""

from __future__ import annotations

import gc
import sys

from django.conf import settings


def tune_after_startup() -> dict[str, object]:
    """Freeze the start-up heap, set the server's thresholds (``SERVER_GC_*``) and its
    thread switch interval (``SERVER_SWITCH_INTERVAL_MS``).

    Returns what was done, for the start-up log. With ``SERVER_GC_FREEZE=false`` and
    the thresholds and interval left at CPython's defaults this changes nothing.
    """
    sys.setswitchinterval(settings.SERVER_SWITCH_INTERVAL_MS / 1000)
    thresholds = tuple(settings.SERVER_GC_THRESHOLDS)
    gc.set_threshold(*thresholds)
    frozen = 0
    if settings.SERVER_GC_FREEZE:
        gc.collect()
        gc.freeze()
        frozen = gc.get_freeze_count()
    return {
        "thresholds": thresholds,
        "frozen_objects": frozen,
        "switch_interval_ms": round(sys.getswitchinterval() * 1000, 3),
    }
