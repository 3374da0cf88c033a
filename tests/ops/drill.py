"""The disaster recovery drill's parts: a private primary, saturday-peak's publishers,
the runbook's steps (``python -m ops.dr``, ``manage.py``), and what a restored log holds.

Everything runs as an operator runs it: ``ops.dr`` and ``manage.py`` as subprocesses,
the servers as real ``python -m wedsync.serve`` processes (``tests.servers.Server``), the
clients as real WebSocket connections. Only the test's own PostgreSQL clusters and Redis
are used, never the machine's shared ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from websockets.asyncio.client import connect
from wedsync_client.client import ClientError, RealtimeClient

from ops.dr import pg
from tests.ops.clusters import OS_USER, Cluster, scratch_dir
from tests.servers import BASE_DIR, RedisServer, Server, free_port, production_env

# saturday-peak (bench/loadtest/scenarios.py): 25 weddings, 50 publishes/s in total.
WEDDINGS = 25
RATE_PER_WEDDING = 2.0
VENDORS_PER_WEDDING = 4
# A week of history before the day: 200 past weddings' topics of 1,000 events each, ~90 MB
# of database, half of it written before the base backup (a restore copies it) and half
# after (a restore replays it from the archive). DR_TEST_HISTORY_PER_TOPIC scales it.
HISTORY_TOPICS = 200
HISTORY_PER_TOPIC = int(os.environ.get("DR_TEST_HISTORY_PER_TOPIC", "1000"))
# Three archive_timeouts of load: the kill lands in steady archiving, not at its start.
LOAD_S = 30.0
PITR_AFTER_S = 12.0  # the point-in-time target, this far into the load


@dataclass(frozen=True)
class Acked:
    """One acknowledged publish: where it was stored, its key, and when the ack arrived."""

    topic: str
    seq: int
    key: str
    at: float


@dataclass
class Load:
    """What the publishers were told: every ack and every error, with wall-clock times."""

    acked: list[Acked] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    pitr_at: float = 0.0
    killed_at: float = 0.0


def iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()


def ops_dr(*args: Any, ok_codes: tuple[int, ...] = (0,)) -> tuple[int, dict]:
    """``python -m ops.dr ARGS --json`` as an operator runs it: (exit code, its document)."""
    done = subprocess.run(
        [sys.executable, "-m", "ops.dr", *map(str, args), "--json"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in ok_codes, f"ops.dr {args[0]}: {done.stdout}\n{done.stderr}"
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}


class Drill:
    """One drill's world: its directory, its Redis, its clusters and servers; ``close()``
    stops them all and removes the directory."""

    def __init__(self) -> None:
        self.root = scratch_dir("wedsync-dr-")
        self.archive, self.backups = self.root / "archive", self.root / "backups"
        self.redis = RedisServer()
        self.clusters: list[Cluster] = []
        self.servers: list[Server] = []

    # --- the primary and its data -----------------------------------------------------

    def primary(self) -> Cluster:
        """A new cluster with continuous archiving (``ops.dr archive-setup``), started,
        with a ``wedsync`` database migrated."""
        primary = Cluster.create(self.root, "primary")
        self.clusters.append(primary)
        ops_dr("archive-setup", "--pgdata", primary.pgdata, "--archive-dir", self.archive)
        primary.start()
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE wedsync")
        self.manage("migrate", "--noinput", cluster=primary)
        return primary

    def manage(self, *args: str, cluster: Cluster) -> str:
        """``manage.py ARGS`` in production shape against ``cluster`` and the drill's Redis."""
        env = {
            **os.environ,
            **production_env(),
            "DATABASE_URL": app_url(cluster),
            "REDIS_URL": self.redis.url,
            "LOG_LEVEL": "WARNING",
        }
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"manage.py {args[0]}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def seed(self, cluster: Cluster) -> list[dict[str, str]]:
        """saturday-peak's weddings (``seed_demo``): each one's topic and planner's token."""
        demo = json.loads(
            self.manage(
                "seed_demo",
                "--weddings",
                str(WEDDINGS),
                "--vendors-per-wedding",
                str(VENDORS_PER_WEDDING),
                "--json",
                cluster=cluster,
            )
        )
        return [
            {"topic": w["topic"], "token": w["suppliers"][0]["users"][0]["token"]}
            for w in demo["weddings"]
        ]

    def standby(self, primary: Cluster) -> Cluster:
        """A streaming standby of ``primary`` (``pg_basebackup -R``), started and streaming."""
        standby = Cluster(self.root / "standby")
        self.clusters.append(standby)
        pg.run(
            [
                pg.pg_bin("pg_basebackup"),
                "-d",
                primary.url(),
                "-D",
                str(standby.pgdata),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-password",
            ],
            os_user=OS_USER,
            timeout=300,
        )
        standby.start()
        deadline = time.monotonic() + 30
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            while time.monotonic() < deadline:
                query = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
                if conn.execute(query).fetchone()[0]:
                    return standby
                time.sleep(0.2)
        raise AssertionError(f"the standby never streamed:\n{standby.output()}")

    # --- servers ------------------------------------------------------------------------

    def serve(self, cluster: Cluster, count: int = 1) -> list[Server]:
        started = [
            Server("uvicorn", DATABASE_URL=app_url(cluster), REDIS_URL=self.redis.url)
            for _ in range(count)
        ]
        self.servers += started
        return started

    def retire_servers(self) -> None:
        """The servers of the lost primary go (they are replaced by processes pointed at
        the new database, as a deploy with a new DATABASE_URL replaces them)."""
        for server in self.servers:
            server.kill()
        self.servers.clear()

    # --- the runbook ----------------------------------------------------------------------

    def restore(self, name: str, target: float | None = None) -> tuple[Cluster, dict]:
        """``ops.dr restore`` of the latest archived state (or ``target``) into a fresh
        cluster ``name``; the cluster and restore's report."""
        cluster = Cluster(self.root / name, free_port())
        cluster.log = cluster.pgdata / "wedsync-restore.log"
        self.clusters.append(cluster)
        args = [
            "restore",
            "--backup",
            self.backups,
            "--archive-dir",
            self.archive,
            "--pgdata",
            cluster.pgdata,
            "--port",
            cluster.port,
            "--socket-dir",
            self.root,
        ]
        if target is not None:
            args += ["--target-time", iso(target)]
        return cluster, ops_dr(*args)[1]

    def base_backup(self, cluster: Cluster) -> dict:
        return ops_dr("base-backup", "--dsn", cluster.url(), "--backups", self.backups)[1]

    def verify(self, cluster: Cluster, target: float) -> tuple[int, dict]:
        return ops_dr(
            "verify", "--dsn", app_url(cluster), "--target-time", iso(target), ok_codes=(0, 1)
        )

    def bump_epoch(self, cluster: Cluster, reason: str) -> str:
        """``manage.py stream_epoch --bump``: the new epoch (its last line)."""
        out = self.manage("stream_epoch", "--bump", "--reason", reason, cluster=cluster)
        return out.strip().splitlines()[-1]

    def archive_figures(self, since_wal: str = "") -> tuple[int, int]:
        """WAL segments in the archive (from ``since_wal`` on) and their bytes."""
        files = [
            p
            for p in self.archive.iterdir()
            if len(p.name) == 24 and p.name >= since_wal  # segments, not .history/.backup
        ]
        return len(files), sum(p.stat().st_size for p in files)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.redis.stop()
        for cluster in self.clusters:
            with contextlib.suppress(Exception):
                cluster.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def app_url(cluster: Cluster) -> str:
    return cluster.url("wedsync")


def fill_history(cluster: Cluster, half: int) -> int:
    """Half (0 or 1) of a week of past weddings' events, stored as the product stores
    them (a cursor per topic at its last seq); returns the number of events."""
    per_half = HISTORY_TOPICS // 2
    params = {"n": HISTORY_PER_TOPIC, "first": 900001 + half * per_half, "count": per_half}
    with psycopg.connect(app_url(cluster), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO realtime_topiccursor (topic, last_seq)"
            " SELECT 'wedding:' || t, %(n)s"
            " FROM generate_series(%(first)s, %(first)s + %(count)s - 1) t",
            params,
        )
        conn.execute(
            "INSERT INTO realtime_event (topic, seq, event, payload, actor_supplier_id,"
            " priority, ack_required, created_at)"
            " SELECT 'wedding:' || t, s, 'message.posted',"
            "  jsonb_build_object('text', 'Table plan v' || s || ': ' || repeat('x', 120)),"
            "  t, 'normal', false, now() - interval '7 days' + s * interval '1 minute'"
            " FROM generate_series(%(first)s, %(first)s + %(count)s - 1) t,"
            "  generate_series(1, %(n)s) s",
            params,
        )
        conn.execute("VACUUM ANALYZE realtime_event")
    return per_half * HISTORY_PER_TOPIC


async def publish_then_lose_primary(
    servers: list[Server], weddings: list[dict], primary: Cluster
) -> Load:
    """saturday-peak's publishers (each wedding's planner, 2/s, over the servers) for
    LOAD_S seconds, then the primary's host is lost; every ack with its arrival time."""
    load, stop = Load(), asyncio.Event()
    clients = [
        RealtimeClient(servers[i % len(servers)].ws_url, token=w["token"], backoff_max=2)
        for i, w in enumerate(weddings)
    ]

    async def publisher(index: int, client: RealtimeClient, topic: str) -> None:
        await client.connect()
        loop = asyncio.get_running_loop()
        period = 1 / RATE_PER_WEDDING
        next_at = loop.time() + period * index / len(weddings)  # spread over the period
        n = 0
        while not stop.is_set():
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += period
            key, n = f"dr-{index}-{n}", n + 1
            try:
                seq = await client.publish(
                    topic, "message.posted", {"text": key}, idempotency_key=key, retries=0
                )
            except ClientError as exc:
                load.failures.append((time.time(), exc.code))
                continue
            load.acked.append(Acked(topic, seq, key, time.time()))

    tasks = [
        asyncio.ensure_future(publisher(i, c, w["topic"]))
        for i, (c, w) in enumerate(zip(clients, weddings, strict=True))
    ]
    await asyncio.sleep(PITR_AFTER_S)
    load.pitr_at = time.time()
    await asyncio.sleep(LOAD_S - PITR_AFTER_S)
    load.killed_at = primary.kill_host()
    await asyncio.sleep(2)  # what the publishers are told while the database is gone
    stop.set()
    for client in clients:
        await client.close()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    return load


async def subscribe_reply(server: Server, token: str, topic: str, **options: Any) -> dict:
    """One real WebSocket subscribe on ``server`` (``since``, ``epoch``); its reply."""
    async with connect(f"{server.ws_url}?token={token}") as ws:
        frame = {"type": "subscribe", "ref": "dr", "topics": {topic: options}}
        await ws.send(orjson.dumps(frame).decode())
        while True:
            reply = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
            if reply.get("type") == "reply" and reply.get("ref") == "dr":
                return reply


async def publish_one(server: Server, token: str, topic: str) -> int:
    async with RealtimeClient(server.ws_url, token=token) as client:
        return await client.publish(topic, "message.posted", {"text": "after the recovery"})


def stored_load(cluster: Cluster, topics: list[str]) -> tuple[dict[tuple[str, int], str], dict]:
    """The load's events in a database ({(topic, seq): key}) and the topics' cursors."""
    with psycopg.connect(app_url(cluster), autocommit=True) as conn:
        events = {
            (topic, seq): text
            for topic, seq, text in conn.execute(
                "SELECT topic, seq, payload->>'text' FROM realtime_event"
                " WHERE topic = ANY(%s) AND event = 'message.posted'",
                [topics],
            )
        }
        cursors = dict(
            conn.execute(
                "SELECT topic, last_seq FROM realtime_topiccursor WHERE topic = ANY(%s)",
                [topics],
            ).fetchall()
        )
    return events, cursors


def lost_tail(load: Load, events: dict[tuple[str, int], str]) -> list[Acked]:
    """The acknowledged events a recovered log lacks, after checking that it holds every
    other one exactly (never another event at an acknowledged seq) and that the loss is
    only each topic's tail (no hole below what was recovered)."""
    lost = [a for a in load.acked if events.get((a.topic, a.seq)) != a.key]
    for a in lost:
        assert (a.topic, a.seq) not in events, f"{a.topic} seq {a.seq} holds another event"
    heads: dict[str, int] = {}
    for topic, seq in events:
        heads[topic] = max(seq, heads.get(topic, 0))
    holes = [a for a in lost if a.seq <= heads.get(a.topic, 0)]
    assert not holes, f"acknowledged events missing below the recovered head: {holes[:5]}"
    return lost


def rpo_seconds(load: Load, lost: list[Acked]) -> float:
    """The seconds of publishing lost: from the first lost acknowledgement to the kill."""
    return load.killed_at - min((a.at for a in lost), default=load.killed_at)
