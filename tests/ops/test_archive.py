"""The archive and restore commands as PostgreSQL runs them (``sh -c`` in the data
directory, ``%p`` and ``%f`` substituted), archive-setup's settings, and the backup
choice and fresh-directory rule of restore. No server needed."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest

from ops.dr import archive as dr_archive
from ops.dr.backup import MANIFEST, choose_backup
from ops.dr.pg import DrError
from ops.dr.restore import restore


def run_command(template: str, pgdata: Path, wal: str) -> int:
    """Run an archive_command/restore_command as PostgreSQL does."""
    command = template.replace("%p", f"pg_wal/{wal}").replace("%f", wal)
    return subprocess.run(["sh", "-c", command], cwd=pgdata, stderr=subprocess.DEVNULL).returncode


@pytest.fixture
def pgdata(tmp_path: Path) -> Path:
    (tmp_path / "data" / "pg_wal").mkdir(parents=True)
    return tmp_path / "data"


def segment(pgdata: Path, name: str, content: bytes) -> str:
    (pgdata / "pg_wal" / name).write_bytes(content)
    return name


def test_archive_command__copies_under_its_name_leaving_no_temporary(pgdata, tmp_path):
    # given an archive whose path has a space (quoting)
    archive = tmp_path / "wal archive"
    archive.mkdir()
    wal = segment(pgdata, "000000010000000000000003", b"wal" * 1000)

    assert run_command(dr_archive.archive_command(archive), pgdata, wal) == 0

    assert [p.name for p in archive.iterdir()] == [wal]
    assert (archive / wal).read_bytes() == b"wal" * 1000


def test_archive_command__same_file_again_succeeds_different_one_fails_unchanged(pgdata, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    command = dr_archive.archive_command(archive)
    wal = segment(pgdata, "000000010000000000000003", b"first")
    assert run_command(command, pgdata, wal) == 0

    # when PostgreSQL retries the same segment (a crash before it noted success)
    # then that succeeds
    assert run_command(command, pgdata, wal) == 0
    # when another cluster's segment of the same name arrives, then it is refused and
    # the archived one is kept
    segment(pgdata, wal, b"another history")
    assert run_command(command, pgdata, wal) != 0
    assert (archive / wal).read_bytes() == b"first"


def test_restore_command__fetches_a_file_and_fails_on_a_missing_one(pgdata, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "000000010000000000000004").write_bytes(b"segment")
    command = dr_archive.restore_command(archive)

    assert run_command(command, pgdata, "000000010000000000000004") == 0
    assert (pgdata / "pg_wal" / "000000010000000000000004").read_bytes() == b"segment"
    # the end of the archive: recovery ends here
    assert run_command(command, pgdata, "000000010000000000000005") != 0


def test_archive_setup__settings_in_their_own_file_included_once(pgdata, tmp_path):
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "postgresql.conf").write_text("#port = 5432\n")

    for _ in range(2):  # run again (a new archive): one include, the newer settings
        done = dr_archive.archive_setup(pgdata, tmp_path / "archive", os_user="postgres")

    main_conf = (pgdata / "postgresql.conf").read_text().splitlines()
    assert main_conf.count(dr_archive.INCLUDE_LINE) == 1
    settings = done.conf_file.read_text()
    assert "archive_mode = 'on'" in settings and "archive_timeout = '10s'" in settings
    assert done.restart_needed is False
    with pytest.raises(ValueError, match="RPO promise"):
        dr_archive.archive_setup(pgdata, tmp_path / "archive", os_user="postgres", timeout=60)


def _backup(root: Path, name: str, finished: str | None) -> None:
    (root / name / "data").mkdir(parents=True)
    if finished is not None:  # None: an unfinished backup (no manifest yet)
        (root / name / MANIFEST).write_text(json.dumps({"name": name, "finished_at": finished}))


def test_choose_backup__newest_finished_before_the_target(tmp_path):
    _backup(tmp_path, "20260522T020000Z", "2026-05-22T02:05:00+00:00")
    _backup(tmp_path, "20260523T020000Z", "2026-05-23T02:05:00+00:00")
    _backup(tmp_path, "20260524T020000Z", None)

    latest = choose_backup(tmp_path, None)
    before = choose_backup(tmp_path, dt.datetime(2026, 5, 23, 1, 0, tzinfo=dt.UTC))

    assert (latest["name"], before["name"]) == ("20260523T020000Z", "20260522T020000Z")
    with pytest.raises(DrError, match="no finished backup"):
        choose_backup(tmp_path, dt.datetime(2026, 5, 1, tzinfo=dt.UTC))


def test_restore__never_into_a_directory_with_anything_in_it(tmp_path):
    # given an existing data directory (the old cluster, say)
    old = tmp_path / "main"
    old.mkdir()
    (old / "PG_VERSION").write_text("15\n")
    (tmp_path / "archive").mkdir()

    with pytest.raises(DrError, match="not empty"):
        restore(tmp_path / "backups", tmp_path / "archive", old, port=1, os_user="postgres")

    assert [p.name for p in old.iterdir()] == ["PG_VERSION"]
