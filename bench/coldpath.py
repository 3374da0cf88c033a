"""The first connect after a server process starts, against later ones
(docs/benchmarks.md, "First connect after start").

``python -m bench.coldpath [--runs 5] [--server-env NAME=VALUE ...] [--importtime]``

Each run starts a real server process (``python -m wedsync.serve``, DEBUG off, on this
process's database and Redis), waits until ``GET /readyz`` answers 200 ``ready``, then
times the first WebSocket handshake and the first subscribe reply, then those of another
user on another wedding (a new user on a warm process), then the first user's again.
With ``--importtime`` the server runs with ``-X importtime`` and the modules it imported
after readiness (what the first connection paid for) are listed.
Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wedsync.settings")
django.setup()

from websockets.asyncio.client import connect  # noqa: E402

from bench.loadtest.seeding import WeddingLogins, remove_seeded, seed_weddings  # noqa: E402
from bench.loadtest.server import StartedServer  # noqa: E402

LOG_DIR = Path(__file__).resolve().parent.parent / "var"
READY_TIMEOUT_S = 60.0


def wait_ready(port: int) -> float:
    """Poll /readyz until it answers 200 ``ready``; the seconds waited."""
    started = time.perf_counter()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            body = json.loads(response.read() or b"{}")
            if response.status == 200 and body.get("status") == "ready":
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"/readyz on port {port} not ready within {READY_TIMEOUT_S:g} s")


async def connect_and_subscribe(url: str, topic: str) -> tuple[float, float]:
    """(handshake ms, subscribe reply ms) of one new connection."""
    started = time.perf_counter()
    ws = await connect(url, compression=None)
    opened = time.perf_counter()
    await ws.send(json.dumps({"type": "subscribe", "ref": "1", "topics": {topic: {}}}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame.get("ref") == "1":
            break
    replied = time.perf_counter()
    assert frame.get("status") == "ok", frame
    await ws.close()
    return (opened - started) * 1000, (replied - opened) * 1000


async def one_run(server: StartedServer, world: list[WeddingLogins]) -> dict[str, float]:
    """The first connection; then another user's on another wedding (the process is warm,
    that user and topic are not: what any new user's first connect costs); then the first
    user's again (everything warm)."""
    url = f"{server.ws_url}?token={{}}"
    first = await connect_and_subscribe(url.format(world[0].tokens[0]), world[0].topic)
    other = await connect_and_subscribe(url.format(world[1].tokens[0]), world[1].topic)
    again = await connect_and_subscribe(url.format(world[0].tokens[0]), world[0].topic)
    return {
        "first_handshake_ms": first[0],
        "first_subscribe_ms": first[1],
        "other_handshake_ms": other[0],
        "other_subscribe_ms": other[1],
        "again_handshake_ms": again[0],
        "again_subscribe_ms": again[1],
    }


def imports_after(log: str, mark: int) -> list[tuple[int, str]]:
    """(cumulative µs, module) of the ``-X importtime`` lines written after ``mark``."""
    found = []
    for line in log[mark:].splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line[12:].split("|"))
            if cumulative.isdigit():
                found.append((int(cumulative), name))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.server_env)
    wrap = (lambda argv: [argv[0], "-X", "importtime", *argv[1:]]) if args.importtime else None
    world = seed_weddings(2, 2, with_staff=False)
    rows = []
    try:
        for run in range(args.runs):
            server = StartedServer(
                "uvicorn", overrides, LOG_DIR, wrap=wrap, log_name="coldpath-server"
            )
            try:
                ready_s = wait_ready(server.port)
                mark = len(Path(server.log_path).read_text(errors="replace"))
                row = asyncio.run(one_run(server, world))
                row["ready_s"] = ready_s
                rows.append(row)
                print(f"run {run + 1}: " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()))
                if args.importtime:
                    late = imports_after(Path(server.log_path).read_text(errors="replace"), mark)
                    print(f"  imported after readiness: {len(late)} modules; slowest:")
                    for micros, name in late[:25]:
                        print(f"    {micros / 1000:8.1f} ms  {name}")
            finally:
                server.stop()
    finally:
        remove_seeded([w.id for w in world])
    print(f"\n{len(rows)} runs (median / max):")
    for key in rows[0]:
        values = [row[key] for row in rows]
        print(f"  {key:22} {statistics.median(values):8.1f} {max(values):8.1f}")

    def total(prefix: str) -> tuple[float, float]:
        values = [r[f"{prefix}_handshake_ms"] + r[f"{prefix}_subscribe_ms"] for r in rows]
        return statistics.median(values), max(values)

    (first, first_max), (other, other_max), (again, again_max) = map(
        total, ("first", "other", "again")
    )
    print("  connect+subscribe (median / max):")
    print(f"    first after start           {first:8.1f} {first_max:8.1f}")
    print(f"    another user's first        {other:8.1f} {other_max:8.1f}   "
          f"first / it: {first / other:.1f}x")  # fmt: skip
    print(f"    the first user's again      {again:8.1f} {again_max:8.1f}   "
          f"first / it: {first / again:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
