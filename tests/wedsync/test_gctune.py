"""The garbage-collector settings of server processes (wedsync/gctune.py)."""

from __future__ import annotations

import gc
import sys

import pytest

from wedsync.server.gctune import tune_after_startup


@pytest.fixture
def restore_gc():
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    sys.setswitchinterval(interval)


def test_tune__freezes_the_start_up_heap_and_sets_the_thresholds(settings, restore_gc):
    settings.SERVER_GC_FREEZE = True
    settings.SERVER_GC_THRESHOLDS = [5000, 15, 50]
    gc.unfreeze()

    done = tune_after_startup()

    assert gc.get_threshold() == (5000, 15, 50)
    frozen = done.pop("frozen_objects")
    assert done == {
        "thresholds": (5000, 15, 50),
        "switch_interval_ms": settings.SERVER_SWITCH_INTERVAL_MS,
    }
    # The modules, Django, the test run: frozen then. Some may have been freed since (an
    # object a thread of an earlier test still held), none added.
    assert 10_000 < gc.get_freeze_count() <= frozen
    done["frozen_objects"] = frozen
    # What was frozen is no longer tracked by any generation's collections.
    assert len(gc.get_objects()) < done["frozen_objects"]


def test_tune__with_freeze_off_and_default_thresholds_changes_nothing(settings, restore_gc):
    settings.SERVER_GC_FREEZE = False
    settings.SERVER_GC_THRESHOLDS = [700, 10, 10]
    gc.unfreeze()

    done = tune_after_startup()

    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
    assert done["frozen_objects"] == 0


def test_tune__sets_the_thread_switch_interval(settings, restore_gc):
    settings.SERVER_SWITCH_INTERVAL_MS = 1.0
    sys.setswitchinterval(0.005)

    done = tune_after_startup()

    assert sys.getswitchinterval() == pytest.approx(0.001)
    assert done["switch_interval_ms"] == 1.0
