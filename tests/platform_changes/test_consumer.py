"""The platform database's changes become WedSync events (ADR 0027), end to end.

A PostgreSQL cluster of this module's own with ``wal_level=logical`` plays the platform's
database: its ``platform_timeline`` table, a publication, a slot, and a role with
REPLICATION only (no superuser), as docs/integration.md asks the platform's DBA to set
up. ``manage.py platform_changes`` runs as a real process against the test database;
faults are real: SIGKILL, ``pg_terminate_backend``, a restart of the cluster, the slot
put back to where it stood before (a crash between storing and confirming).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from ops.dr import pg
from platform_changes.models import ChangeCursor, RejectedChange
from platform_changes.pgoutput import lsn_from_text
from realtime.models import Event
from tests.factories import make_wedding
from tests.ops.clusters import Cluster, scratch_dir
from tests.servers import BASE_DIR, test_database_url

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
]

SLOT = "wedsync_test"
COPY = "wedsync_test_copy"
ROLE = "wedsync_changes"
_ids = itertools.count(1)
SCHEMA = f"""
CREATE TABLE platform_timeline (
    id bigint PRIMARY KEY,
    wedding_id bigint,
    title text,
    starts_at timestamptz,
    ends_at timestamptz,
    location text,
    status text NOT NULL DEFAULT 'planned',
    key_moment boolean NOT NULL DEFAULT false,
    pinned boolean NOT NULL DEFAULT false
);
CREATE TABLE platform_other (id bigint PRIMARY KEY);
CREATE PUBLICATION wedsync_changes FOR TABLE platform_timeline;
CREATE ROLE {ROLE} LOGIN REPLICATION;
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The platform's database: started once for the module, removed after it."""
    root = scratch_dir("wsplat-")
    db = Cluster.create(root, "data")
    with open(db.pgdata / "postgresql.auto.conf", "a") as conf:
        conf.write("wal_level = logical\nmax_slot_wal_keep_size = '64MB'\n")
    db.start()
    try:
        with psycopg.connect(db.url(), autocommit=True) as conn:
            conn.execute(SCHEMA)
        yield db
    finally:
        db.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def slot(cluster: Cluster) -> str:
    """The module's replication slot (gone with the cluster)."""
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [SLOT])
    return SLOT


@pytest.fixture
def platform(cluster: Cluster, slot: str) -> Iterator[psycopg.Connection]:
    """A connection of the platform's backend (autocommit)."""
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        yield conn


class ConsumerProcess:
    """``manage.py platform_changes`` as its own process, reading ``cluster``'s slot as
    the REPLICATION-only role."""

    def __init__(self, cluster: Cluster) -> None:
        self.metrics_dir = tempfile.mkdtemp(prefix="wsplat-metrics-")
        self.env = {
            **os.environ,
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            "DJANGO_READ_DOT_ENV_FILE": "false",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CACHE_NAMESPACE": settings.CACHE_NAMESPACE,
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            "LOG_LEVEL": "WARNING",
            "PLATFORM_CHANGES_DATABASE_URL": pg.dsn(cluster.port, dbname="postgres", user=ROLE),
            "PLATFORM_CHANGES_SLOT": SLOT,
            "PLATFORM_CHANGES_BATCH": "20",
            "PLATFORM_CHANGES_POLL_INTERVAL": "0.05",
            "PLATFORM_CHANGES_HEARTBEAT_INTERVAL": "0.2",
        }
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.log = Path(tempfile.mkstemp(prefix="wsplat-consumer-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "platform_changes"],
                cwd=BASE_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def module_consumer(
    django_db_setup: None, cluster: Cluster, slot: str
) -> Iterator[ConsumerProcess]:
    """One consumer process for the module (a start costs seconds); tests that kill it
    start it again."""
    proc = ConsumerProcess(cluster)
    proc.start()
    yield proc
    proc.stop()
    shutil.rmtree(proc.metrics_dir, ignore_errors=True)
    proc.log.unlink(missing_ok=True)


@pytest.fixture
def consumer(module_consumer: ConsumerProcess) -> ConsumerProcess:
    if module_consumer.proc is None or module_consumer.proc.poll() is not None:
        module_consumer.start()  # an earlier test left it stopped
    return module_consumer


def wait_for(check: Callable[[], object], what: str, proc: ConsumerProcess, timeout=15.0):
    """Poll ``check`` until it is truthy; fail with the consumer's output if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        if proc.proc is not None and proc.proc.poll() is not None:
            pytest.fail(f"the consumer exited while waiting for {what}:\n{proc.output()}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n{proc.output()}")


START = dt.datetime(2026, 6, 13, 13, 0, tzinfo=dt.UTC)


def insert(conn: psycopg.Connection, wedding_id: int, title: str, **columns) -> int:
    row_id = next(_ids)
    values = {"id": row_id, "wedding_id": wedding_id, "title": title, "starts_at": START}
    values.update(columns)
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    conn.execute(f"INSERT INTO platform_timeline ({names}) VALUES ({marks})", list(values.values()))  # noqa: S608
    return row_id


def events_of(wedding_id: int) -> list[Event]:
    return list(Event.objects.filter(topic=f"wedding:{wedding_id}").order_by("seq"))


def test_row_changes__become_events_in_commit_order__other_tables_only_move_the_slot(
    platform, consumer
):
    # given
    wedding = make_wedding()
    # when: an insert, then a transaction whose insert commits after a later update
    first = insert(platform, wedding.pk, "Ceremony")
    with platform.transaction():
        second = insert(platform, wedding.pk, "Drinks", location="Garden")
        platform.execute(
            "UPDATE platform_timeline SET title = 'Vows', key_moment = true WHERE id = %s",
            [first],
        )
    platform.execute(
        "UPDATE platform_timeline SET starts_at = starts_at + interval '30 minutes' WHERE id = %s",
        [second],
    )
    platform.execute("DELETE FROM platform_timeline WHERE id = %s", [first])
    # then
    events = wait_for(
        lambda: len(events_of(wedding.pk)) >= 5 and events_of(wedding.pk), "five events", consumer
    )
    assert [(e.seq, e.event) for e in events] == [
        (1, "timeline.item.created"),
        (2, "timeline.item.created"),
        (3, "timeline.item.updated"),
        (4, "timeline.item.updated"),
        (5, "timeline.item.deleted"),
    ]
    ceremony, drinks = events[0].payload["id"], events[1].payload["id"]
    assert events[1].payload["location"] == "Garden"
    assert events[2].payload["id"] == ceremony
    assert events[2].payload["title"] == "Vows" and events[2].payload["key_moment"] is True
    assert events[3].payload["id"] == drinks
    assert events[3].payload["starts_at"].startswith("2026-06-13T13:30:00")
    assert events[4].payload["id"] == ceremony
    assert {e.actor_user.username for e in events} == {"platform-changes"}
    assert all(e.idempotency_key.startswith("pgc-") for e in events)
    # when: the platform then writes to its other tables only
    platform.execute("INSERT INTO platform_other SELECT generate_series(1, 2000)")
    written = lsn_from_text(platform.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    # then: nothing is published, and the heartbeat lets the slot confirm past that WAL
    # (else the slot would keep it for ever)
    wait_for(lambda: _confirmed_past(platform, written), "the slot confirmed", consumer)
    assert len(events_of(wedding.pk)) == 5


def test_bad_rows__are_rejected_and_the_stream_goes_on(platform, consumer):
    # given
    wedding = make_wedding()
    # when: an unknown wedding, a missing title, an unknown status, then a good row
    unknown = insert(platform, 999_999_999, "Nobody's")
    untitled = insert(platform, wedding.pk, None)
    odd = insert(platform, wedding.pk, "Odd", status="partying")
    backwards = insert(platform, wedding.pk, "Backwards", ends_at=START - dt.timedelta(hours=1))
    insert(platform, wedding.pk, "Speeches")
    # then
    events = wait_for(lambda: events_of(wedding.pk), "the good row's event", consumer)
    assert [e.payload["title"] for e in events] == ["Speeches"]
    rejected = {r.platform_id: r for r in RejectedChange.objects.all()}
    assert set(rejected) == {unknown, untitled, odd, backwards}
    assert rejected[unknown].code == "unknown_wedding"
    assert rejected[unknown].wedding_id == 999_999_999
    assert rejected[untitled].code == "invalid_payload"
    assert "payload.title" in rejected[untitled].message
    assert "payload.status" in rejected[odd].message
    assert "payload.ends_at" in rejected[backwards].message
    assert "platform change rejected" in consumer.output()
    assert consumer.proc.poll() is None


def _slot_lsn(conn: psycopg.Connection, name: str) -> str:
    return conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [name]
    ).fetchone()[0]


def test_killed_consumer__resumes_without_loss_or_duplicates(platform, consumer):
    # given: the slot's position now, kept aside in a copy of the slot
    wedding = make_wedding()
    platform.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", [SLOT, COPY])
    titles = [f"Item {n}" for n in range(60)]
    # when: SIGKILL while rows stream in
    for title in titles[:40]:
        insert(platform, wedding.pk, title)
    wait_for(lambda: len(events_of(wedding.pk)) >= 5, "the first events", consumer)
    consumer.kill()
    stored_before = len(events_of(wedding.pk))
    # ... the slot is put back to where it stood before all of it, as a crash after
    # storing and before confirming leaves it, and rows arrive while the consumer is down
    platform.execute("SELECT pg_drop_replication_slot(%s)", [SLOT])
    platform.execute("SELECT pg_copy_logical_replication_slot(%s, %s)", [COPY, SLOT])
    platform.execute("SELECT pg_drop_replication_slot(%s)", [COPY])
    for title in titles[40:]:
        insert(platform, wedding.pk, title)
    consumer.start()
    # then: every row exactly once, in insert order, seqs gapless
    wait_for(lambda: len(events_of(wedding.pk)) >= 60, "sixty events", consumer)
    end = ChangeCursor.objects.get(slot=SLOT).lsn
    wait_for(lambda: _confirmed_past(platform, end), "the slot confirmed", consumer)
    events = events_of(wedding.pk)
    assert 5 <= stored_before < 60
    assert [e.payload["title"] for e in events] == titles
    assert [e.seq for e in events] == list(range(1, 61))


def _confirmed_past(conn: psycopg.Connection, lsn: int) -> bool:
    return lsn_from_text(_slot_lsn(conn, SLOT)) >= lsn


def test_terminated_connection_and_restarted_database__are_survived(cluster, platform, consumer):
    # given
    wedding = make_wedding()
    insert(platform, wedding.pk, "Before")
    wait_for(lambda: len(events_of(wedding.pk)) == 1, "the first event", consumer)
    # when: its connection is ended by the DBA
    ended = platform.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'wedsync-platform-changes'"
    ).fetchone()[0]
    assert ended == 1
    insert(platform, wedding.pk, "After terminate")
    wait_for(lambda: len(events_of(wedding.pk)) == 2, "the second event", consumer)
    # when: the platform's database restarts
    pg.stop(cluster.pgdata, os_user="postgres", mode="fast", timeout=30)
    cluster.start()
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        insert(conn, wedding.pk, "After restart")
    # then
    wait_for(lambda: len(events_of(wedding.pk)) == 3, "the third event", consumer)
    assert [e.payload["title"] for e in events_of(wedding.pk)] == [
        "Before",
        "After terminate",
        "After restart",
    ]
    assert "lost" in consumer.output()
