"""``python -m wedsync.serve --workers N``: several uvicorn processes on one port, real
processes and real WebSocket clients (docs/adr/0011-workers-on-one-port.md).

Which worker holds a connection is read from /proc (the server end's socket inode among
each worker's open files), so the product needs no endpoint telling who served whom.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.loadtest.procstat import descendants, listening_pids, server_pids
from realtime.protocol import CLOSE_RESTARTING
from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import BASE_DIR, Server, free_port
from wedsync.server.asgi_server import asgi_server_command

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(150),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT, /proc"),
]

# Connections per user stay under REALTIME_MAX_CONNECTIONS_PER_USER (20).
USERS = 4
_refs = itertools.count(1)


@database_sync_to_async
def seed() -> dict[str, Any]:
    wedding = make_wedding()
    users = [make_user() for _ in range(USERS)]
    for user in users:
        make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
    return {"topic": wedding.topic, "tokens": [token_issue(user=u) for u in users]}


def workers_of(server: Server) -> list[int]:
    """The supervisor's worker processes now."""
    return [pid for pid in descendants(server.proc.pid) if pid != server.proc.pid]


def wait_listening_workers(server: Server, count: int, timeout: float = 60) -> list[int]:
    """Wait until ``count`` workers of the supervisor listen on its port (each listens
    once it has loaded the application); their PIDs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = set(workers_of(server))
        listening = [pid for pid in listening_pids(server.port) if pid in workers]
        if len(listening) == count:
            return sorted(listening)
        assert server.proc.poll() is None, f"the supervisor exited:\n{server.output()}"
        time.sleep(0.2)
    raise AssertionError(f"{count} workers never listened on {server.port}:\n{server.output()}")


def server_ends(port: int, pids: list[int]) -> dict[int, int]:
    """{client port: PID of the worker holding the server end} for the established
    connections to ``port`` (from /proc/net/tcp and each worker's open files)."""
    client_port_by_inode = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
            client_port_by_inode[f"socket:[{inode}]"] = int(remote.rsplit(":", 1)[1], 16)
    ends = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed since the listing
                continue
            if target in client_port_by_inode:
                ends[client_port_by_inode[target]] = pid
    return ends


async def request(ws: ClientConnection, frame: dict) -> dict:
    """Send a frame and return the reply with its ref (events in between are skipped)."""
    ref = str(next(_refs))
    await ws.send(orjson.dumps({**frame, "ref": ref}).decode())
    while True:
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
        if reply.get("ref") == ref:
            return reply


async def open_subscribed(server: Server, world: dict, count: int) -> list[ClientConnection]:
    """``count`` authenticated connections, each subscribed to the wedding (so each has
    been served by its worker: authentication, the database, the layer)."""
    clients = []
    for n in range(count):
        ws = await connect(f"{server.ws_url}?token={world['tokens'][n % USERS]}")
        reply = await request(ws, {"type": "subscribe", "topics": {world["topic"]: {}}})
        assert reply["topics"][world["topic"]]["status"] == "ok", reply
        clients.append(ws)
    return clients


async def close_code(ws: ClientConnection, timeout: float = 30) -> int | None:
    """Read (and drop) frames until the connection closes; the server's close code, or
    None when it sent no close frame."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return closed.value.rcvd.code if closed.value.rcvd else None


def by_worker(clients: list[ClientConnection], ends: dict[int, int]) -> dict[int, list]:
    """The clients grouped by the PID of the worker that holds them."""
    groups: dict[int, list] = {}
    for ws in clients:
        groups.setdefault(ends[ws.local_address[1]], []).append(ws)
    return groups


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def wait_reaped(pid: int, timeout: float = 10) -> None:
    """Wait until ``pid`` is gone: its supervisor has reaped it, so every thread of it has
    exited and closed its sockets (its main thread turns zombie before the others)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"pid {pid} still there after {timeout} s"
        time.sleep(0.02)


def healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture
def two_workers():
    server = Server("uvicorn", workers=2)
    try:
        server.worker_pids = wait_listening_workers(server, 2)
        yield server
    finally:
        server.stop()


async def test_two_workers__connections_spread_over_both_processes(two_workers):
    # given a supervisor with two workers on one port
    server = two_workers
    world = await seed()

    # when 40 clients connect to that port and subscribe
    clients = await open_subscribed(server, world, 40)

    # then both workers hold some of them, and the load benchmark finds every process
    try:
        ends = server_ends(server.port, server.worker_pids)
        spread = Counter(ends.values())
        print(f"40 connections over 2 workers: {sorted(spread.values())}")
        assert set(spread) == set(server.worker_pids), spread
        assert sum(spread.values()) == 40
        assert server_pids(server.port) == sorted([server.proc.pid, *server.worker_pids])
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))


async def test_killed_worker__restarted_while_the_other_keeps_serving(two_workers):
    # given 20 subscribed clients over both workers
    server = two_workers
    world = await seed()
    clients = await open_subscribed(server, world, 20)
    groups = by_worker(clients, server_ends(server.port, server.worker_pids))
    assert len(groups) == 2, groups
    victim, survivor = server.worker_pids

    # when one worker is SIGKILLed
    os.kill(victim, signal.SIGKILL)

    # then, once its socket is gone, the port goes on answering: the survivor's socket
    # takes every new connection (one that arrived in the instant of the crash, in the
    # dead socket's queue, is reset unless net.ipv4.tcp_migrate_req=1; docs/operations.md)
    try:
        wait_reaped(victim)
        assert [healthz(server.port) for _ in range(20)] == [200] * 20
        # and the survivor's clients still get replies while the victim's were cut off
        for ws in groups[survivor]:
            assert (await request(ws, {"type": "ping"}))["type"] == "pong"
        for ws in groups[victim]:
            assert await close_code(ws) is None  # no close frame: the process is gone
        # and the supervisor starts a replacement, says so, and it serves too
        workers = wait_listening_workers(server, 2)
        (replacement,) = set(workers) - {survivor}
        assert replacement != victim
        assert f"(pid {victim}) was killed by SIGKILL" in server.output()
        again = await open_subscribed(server, world, 20)
        ends = server_ends(server.port, workers)
        spread = Counter(ends[ws.local_address[1]] for ws in again)
        print(f"20 connections after the restart: {dict(spread)}")
        assert spread[replacement] > 0 and spread[survivor] > 0, spread
        clients += again
    finally:
        await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)


async def test_sigterm_to_the_supervisor__every_worker_drains_with_1012_and_exits(two_workers):
    # given 20 subscribed clients over both workers
    server = two_workers
    world = await seed()
    clients = await open_subscribed(server, world, 20)
    assert len(by_worker(clients, server_ends(server.port, server.worker_pids))) == 2

    # when the supervisor alone gets SIGTERM (as from systemd or a deploy)
    os.kill(server.proc.pid, signal.SIGTERM)

    # then every client is closed with 1012 (reconnect elsewhere) ...
    codes = await asyncio.gather(*(close_code(ws) for ws in clients))
    assert codes == [CLOSE_RESTARTING] * 20
    # ... and every worker exits, then the supervisor, cleanly
    assert await asyncio.to_thread(server.proc.wait, 30) == 0
    assert not [pid for pid in server.worker_pids if alive(pid)]
    assert "received SIGTERM: stopping 2 workers" in server.output()
    with pytest.raises(OSError):
        healthz(server.port)


def test_workers__refuse_a_port_already_in_use():
    # given a port somebody listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        # when two workers are asked for it
        done = subprocess.run(
            asgi_server_command("127.0.0.1", port, "uvicorn", workers=2),
            cwd=BASE_DIR,
            env={**os.environ, "DJANGO_READ_DOT_ENV_FILE": "false"},
            capture_output=True,
            text=True,
            timeout=60,
        )

    # then the supervisor says so and starts nobody (no worker would join that port)
    assert done.returncode == 1
    assert f"cannot bind 127.0.0.1:{port}: Address already in use" in done.stderr


def test_asgi_server_command__daphne_runs_one_process_per_port():
    assert "--workers" in asgi_server_command("127.0.0.1", free_port(), "uvicorn", workers=3)
    with pytest.raises(ValueError, match="nginx or HAProxy"):
        asgi_server_command("127.0.0.1", free_port(), "daphne", workers=2)
