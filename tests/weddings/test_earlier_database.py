"""A database made before the domain moved out of ``wedsync/`` into ``weddings/`` (commit
43c68f8: migrated, then ``seed_demo --weddings 1 --vendors-per-wedding 2``) migrates with
nothing to do for the domain: the app keeps its label ``wedsync``, so its tables,
migration history, content types and permissions keep their names (ADR 0014). Migrations
added since (other apps') apply on top."""

from __future__ import annotations

import gzip
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]
EARLIER = Path(__file__).parent / "data" / "database-at-43c68f8.sqlite3.gz"
# The domain's migrations written after that database was made (the move added none).
DOMAIN_MIGRATIONS_SINCE = sorted(
    path.stem
    for path in (BASE_DIR / "weddings" / "migrations").glob("0*.py")
    if path.stem != "0001_initial"
)

pytestmark = pytest.mark.slow


def _manage(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(DATABASE_URL=f"sqlite:///{db}", DJANGO_DEBUG="true")
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def earlier_db(tmp_path: Path) -> Path:
    db = tmp_path / "earlier.sqlite3"
    with gzip.open(EARLIER, "rb") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return db


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_earlier_database__the_domain_has_no_migration_to_apply_and_keeps_its_rows(earlier_db):
    weddings_before = _rows(earlier_db, "SELECT id, partner_one FROM wedsync_wedding")
    history_before = _rows(earlier_db, "SELECT app, name FROM django_migrations ORDER BY id")
    assert weddings_before and ("wedsync", "0001_initial") in history_before

    # what is left to apply is only what was added since: of the domain (label wedsync,
    # never weddings) only its migrations after 0001, none for the move itself
    plan = _manage(earlier_db, "migrate", "--plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    pending = [line.strip() for line in plan.stdout.splitlines()[1:] if line.strip()]
    added = [f"wedsync.{name}" for name in DOMAIN_MIGRATIONS_SINCE]
    assert [line for line in pending if line.startswith(("wedsync.", "weddings."))] == added

    # and migrating keeps the history, the rows and the content types
    migrate = _manage(earlier_db, "migrate", "--noinput")
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    history = _rows(earlier_db, "SELECT app, name FROM django_migrations ORDER BY id")
    assert history[: len(history_before)] == history_before
    assert [row for row in history if row[0] == "wedsync"] == [
        row for row in history_before if row[0] == "wedsync"
    ] + [("wedsync", name) for name in DOMAIN_MIGRATIONS_SINCE]
    assert not [row for row in history if row[0] == "weddings"]
    assert _rows(earlier_db, "SELECT id, partner_one FROM wedsync_wedding") == weddings_before
    labels = {label for (label,) in _rows(earlier_db, "SELECT app_label FROM django_content_type")}
    assert "wedsync" in labels and "weddings" not in labels
    assert _manage(earlier_db, "migrate", "--check").returncode == 0


def test_earlier_database__serves_its_weddings_through_the_moved_models(earlier_db):
    # the demo's wedding, read through weddings.models in a fresh process
    shell = _manage(
        earlier_db, "shell", "--verbosity", "0", "-c",
        "from weddings.models import Wedding, Booking; "
        "print(Wedding.objects.count(), Booking.objects.filter(active=True).count())",
    )  # fmt: skip
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == ["1", "2"]
