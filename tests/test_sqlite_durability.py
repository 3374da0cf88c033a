"""The embedded SQLite database syncs every commit: an acknowledged publish survives a
power loss (``PRAGMA synchronous=FULL``, still in WAL mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA

_PROBE = """
import json, django
django.setup()
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("PRAGMA synchronous")
    synchronous = cursor.fetchone()[0]
    cursor.execute("PRAGMA journal_mode")
    journal_mode = cursor.fetchone()[0]
print(json.dumps({"vendor": connection.vendor, "synchronous": synchronous,
                  "journal_mode": journal_mode}))
"""


def test_sqlite_configuration__connections_sync_every_commit_in_wal(tmp_path: Path) -> None:
    # given the settings loaded with a SQLite DATABASE_URL (whatever this run's database)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "wedsync.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'durability.sqlite3'}",
    }

    # when a connection is opened through Django
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=50,
    )  # fmt: skip

    # then it syncs every commit (FULL) and keeps the write-ahead log
    assert probe.returncode == 0, probe.stderr
    answer = json.loads(probe.stdout.strip().splitlines()[-1])
    assert answer == {"vendor": "sqlite", "synchronous": FULL, "journal_mode": "wal"}
