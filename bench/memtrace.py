"""What a server process's memory holds, per connection (development only).

``python -m bench.memtrace serve --out DIR [--frames N] [--stock-ws] -- [wedsync.serve options]``
runs one ``wedsync.serve`` process (one worker) with ``tracemalloc`` tracing ``N``
frames (default 12; 0: not traced, only the counts below), and on SIGUSR2 writes
``DIR/snap-K.tracemalloc`` (the snapshot, K counting from 1) and ``DIR/snap-K.json``:
RSS, glibc's heap (``mallinfo2``: in use, free in the arenas), the connections and tasks
of the event loop, and the count of each type of object the garbage collector tracks.
Nothing of this is in the production code: the server is the same, started from here.

``python -m bench.memtrace compare DIR/snap-1 DIR/snap-2 [--per N]`` prints what grew
between two snapshots, each allocation charged to its nearest frame outside the standard
library (our code or a library: an ``asyncio.Queue`` made by uvicorn is uvicorn's), and
the objects that grew by type; ``--per N`` divides by N (the connections opened between
the two). docs/benchmarks.md, "Memory per idle connection", shows the use.

Tracing costs memory of its own (its traces are not in the snapshot but are in RSS): read
RSS from a run without ``--frames``, the breakdown from a run with it.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import json
import linecache
import os
import pickle
import signal
import sys
import sysconfig
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

_STDLIB = sysconfig.get_paths()["stdlib"]
_ROOT = str(Path(__file__).resolve().parent.parent)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mallinfo() -> dict[str, int] | None:
    """glibc's heap: bytes in use, free in the arenas, in mmapped blocks (None elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    info = fn()
    return {"in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _loop_facts() -> dict[str, Any]:
    from realtime.node import get_node

    try:
        node = get_node()
        tasks = len(asyncio.all_tasks(asyncio.get_running_loop()))
    except RuntimeError:
        return {}
    consumers = node.consumers.consumers()
    writers = sum(1 for c in consumers if getattr(c.outbox, "_writer", None) is not None)
    return {"connections": len(consumers), "tasks": tasks, "outbox_writers": writers}


def _pymalloc() -> dict[str, int]:
    """pymalloc's arenas (``sys._debugmallocstats``): bytes in arenas, in blocks in use,
    free in pools and in empty pools. Arenas that hold a few live blocks cannot be given
    back, so the gap between the first two is what fragmentation holds."""
    import re
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as tmp:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read()
    wanted = {
        "arenas_bytes": r"# bytes in allocated blocks\s+=\s+([\d,]+)",
        "free_in_pools": r"# bytes in available blocks\s+=\s+([\d,]+)",
        "empty_pools": r"(\d+) unused pools \* \d+ bytes\s+=\s+([\d,]+)",
        "arenas": r"# arenas allocated current\s+=\s+([\d,]+)",
    }
    facts: dict[str, int] = {}
    for key, pattern in wanted.items():
        match = re.search(pattern, text)
        if match:
            facts[key] = int(match.groups()[-1].replace(",", ""))
    facts["in_use"] = facts.pop("arenas_bytes", 0)
    return facts


def _sizes(objects: list[Any]) -> dict[str, int]:
    """Bytes of each type's objects (``sys.getsizeof``, with an instance dict).

    Reading ``__dict__`` makes the dict of an instance that CPython kept without one
    (its attributes inline): a later snapshot's RSS holds those dicts too. Compare RSS
    between the snapshot before the connections and the first one after them."""
    sizes: Counter[str] = Counter()
    for obj in objects:
        try:
            size = sys.getsizeof(obj)
            d = getattr(obj, "__dict__", None) if not isinstance(obj, type) else None
            if type(d) is dict:
                size += sys.getsizeof(d)
        except Exception:  # noqa: S112 - a proxy or half-made object: not counted
            continue
        sizes[type(obj).__qualname__] += size
    return dict(sizes.most_common(60))


def take(out: Path, index: int) -> Path:
    """Write snapshot ``index`` (and its facts) into ``out``; returns its path stem."""
    gc.collect()
    stem = out / f"snap-{index}"
    facts: dict[str, Any] = {
        "rss_kib": _rss_kib(),
        "malloc": _mallinfo(),
        **_loop_facts(),
        "pymalloc": _pymalloc(),
    }
    objects = gc.get_objects()
    facts["objects"] = dict(Counter(type(o).__qualname__ for o in objects).most_common(80))
    facts["object_bytes"] = _sizes(objects)
    del objects
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        facts["traced_kib"] = sum(t.size for t in snapshot.traces) // 1024
        with open(f"{stem}.tracemalloc", "wb") as fh:
            pickle.dump(snapshot, fh, pickle.HIGHEST_PROTOCOL)
    Path(f"{stem}.json").write_text(json.dumps(facts, indent=1))
    return stem


def serve(args: argparse.Namespace, rest: list[str]) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.frames:
        tracemalloc.start(args.frames)
    count = [0]

    def on_signal(signum: int, frame: Any) -> None:
        count[0] += 1
        stem = take(out, count[0])
        print(f"memtrace: wrote {stem}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR2, on_signal)
    from wedsync.server import serve as served

    if args.stock_ws:  # the baseline: uvicorn's own protocol (ADR 0035's "before")
        configure = served.config

        def stock(*a: Any, **kw: Any) -> Any:
            config = configure(*a, **kw)
            config.ws = "websockets-sansio"
            return config

        served.config = stock
    served.main(["--workers", "1", *rest])


def _owner(stat: tracemalloc.Statistic) -> tuple[str, str]:
    """The nearest frame outside the standard library, as ``package/module.py:line``,
    and its source line."""
    frames = stat.traceback
    chosen = frames[-1]
    for frame in reversed(frames):  # the traceback is oldest first
        name = frame.filename
        if not (name.startswith(_STDLIB) and "site-packages" not in name):
            chosen = frame
            break
    name = chosen.filename
    if "site-packages/" in name:
        label = name.split("site-packages/", 1)[1]
    elif name.startswith(_ROOT):
        label = os.path.relpath(name, _ROOT)
    else:
        label = f"{os.path.relpath(name, _STDLIB)} (stdlib)"
    source = linecache.getline(name, chosen.lineno).strip()[:70]
    return f"{label}:{chosen.lineno}", source


def _load(stem: str) -> tuple[dict[str, Any], tracemalloc.Snapshot | None]:
    facts = json.loads(Path(f"{stem}.json").read_text())
    path = Path(f"{stem}.tracemalloc")
    if not path.exists():
        return facts, None
    with open(path, "rb") as fh:
        return facts, pickle.load(fh)  # noqa: S301 -- our own file


def _print_heaps(before: dict[str, Any], after: dict[str, Any], per: int, unit: str) -> None:
    """What grew in glibc's heap and in pymalloc's arenas."""
    if before.get("malloc") and after.get("malloc"):
        for key in ("in_use", "free", "mmapped"):
            grew = after["malloc"][key] - before["malloc"][key]
            print(f"malloc {key}: {grew / per:,.0f} {unit}")
    if before.get("pymalloc") and after.get("pymalloc"):
        for key in ("in_use", "free_in_pools", "empty_pools", "arenas"):
            grew = after["pymalloc"].get(key, 0) - before["pymalloc"].get(key, 0)
            shown = f"{grew:,}" if key == "arenas" else f"{grew / per:,.0f} {unit}"
            print(f"pymalloc {key}: {shown}")


def _print_traced(
    snap_a: tracemalloc.Snapshot, snap_b: tracemalloc.Snapshot, per: int, unit: str, top: int
) -> None:
    grown: Counter[str] = Counter()
    where: dict[str, str] = {}
    for stat in snap_b.compare_to(snap_a, "traceback"):
        if stat.size_diff:
            owner, source = _owner(stat)
            grown[owner] += stat.size_diff
            where.setdefault(owner, source)
    total = sum(grown.values())
    print(f"\ntraced: {total / per:,.0f} {unit}; by nearest frame outside the stdlib:")
    for owner, size in grown.most_common(top):
        print(f"{size / per:10,.0f}  {owner}  {where[owner]}")


def _print_objects(before: dict[str, Any], after: dict[str, Any], per: int, unit: str) -> None:
    grew_objects = Counter(after["objects"])
    grew_objects.subtract(before["objects"])
    print(f"\nobjects tracked by gc ({unit.replace('B ', 'count ')}):")
    for name, n in grew_objects.most_common(25):
        if n > 0:
            print(f"{n / per:8.2f}  {name}")
    if "object_bytes" in before and "object_bytes" in after:
        grew_bytes = Counter(after["object_bytes"])
        grew_bytes.subtract(before["object_bytes"])
        total = sum(n for n in grew_bytes.values() if n > 0)
        print(f"\nbytes of gc-tracked objects (sys.getsizeof, with instance dicts): "
              f"{total / per:,.0f} {unit}")  # fmt: skip
        for name, n in grew_bytes.most_common(25):
            if n > 0:
                print(f"{n / per:8,.0f}  {name}")


def compare(args: argparse.Namespace) -> None:
    (before, snap_a), (after, snap_b) = _load(args.before), _load(args.after)
    per = max(1, args.per)
    unit = "B per connection" if per > 1 else "B"
    print(f"RSS {before['rss_kib']} -> {after['rss_kib']} KiB: "
          f"{(after['rss_kib'] - before['rss_kib']) * 1024 / per:,.0f} {unit}")  # fmt: skip
    _print_heaps(before, after, per, unit)
    for key in ("connections", "tasks", "outbox_writers"):
        print(f"{key}: {before.get(key)} -> {after.get(key)}")
    if snap_a is not None and snap_b is not None:
        _print_traced(snap_a, snap_b, per, unit, args.top)
    _print_objects(before, after, per, unit)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run wedsync.serve; snapshots on SIGUSR2")
    s.add_argument("--out", required=True, help="directory of the snapshots")
    s.add_argument("--frames", type=int, default=12, help="frames traced (0: no tracing)")
    s.add_argument(
        "--stock-ws",
        action="store_true",
        help="uvicorn's own websockets-sansio protocol instead of wedsync.server.websocket's",
    )
    c = sub.add_parser("compare", help="what grew between two snapshots")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--per", type=int, default=1, help="divide by (connections opened)")
    c.add_argument("--top", type=int, default=30)
    argv = sys.argv[1:] if argv is None else argv
    rest: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, rest = argv[:at], argv[at + 1 :]
    args = parser.parse_args(argv)
    if args.command == "serve":
        if not 0 <= args.frames <= 100:
            parser.error(f"--frames must be between 0 and 100, not {args.frames}")
        serve(args, rest)
    else:
        compare(args)


if __name__ == "__main__":
    main()
