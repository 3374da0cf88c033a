"""The memory harness's own readings (bench/memtrace.py): pymalloc's arenas parsed from
``sys._debugmallocstats`` and the bytes of each object type, as ``compare`` prints them."""

from __future__ import annotations

import gc
import json
from pathlib import Path

from bench import memtrace


class _Held:
    def __init__(self, n: int) -> None:
        self.payload = "x" * n


def test_pymalloc__reads_the_arenas_and_sees_small_objects_grow():
    before = memtrace._pymalloc()
    held = [(i, str(i)) for i in range(50_000)]  # small objects: pymalloc's
    after = memtrace._pymalloc()

    assert set(before) >= {"in_use", "free_in_pools", "empty_pools", "arenas"}
    assert before["arenas"] >= 1
    # 50,000 tuples of two (56 bytes) and their strings: well over 2 MB in blocks
    assert after["in_use"] - before["in_use"] > 2_000_000
    del held


def test_sizes__counts_an_instance_with_its_dict():
    objects = [_Held(10) for _ in range(3)]

    sizes = memtrace._sizes(objects)

    assert sizes["_Held"] > 3 * 48  # the objects and their dicts, not the objects alone


def test_compare__prints_the_growth_per_connection(tmp_path: Path, capsys):
    gc.collect()
    first = memtrace.take(tmp_path, 1)
    held = [_Held(100) for _ in range(20_000)]
    second = memtrace.take(tmp_path, 2)
    assert json.loads(Path(f"{second}.json").read_text())["objects"]["_Held"] == 20_000

    memtrace.main(["compare", str(first), str(second), "--per", "20000"])

    out = capsys.readouterr().out
    assert "pymalloc in_use:" in out
    assert "1.00  _Held" in out
    del held
