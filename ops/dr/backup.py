"""Base backups: ``pg_basebackup`` into a timestamped directory, verified, with a manifest.

Layout of a backup root (``--backups``)::

    20260523T021500Z/
        data/                  pg_basebackup -Fp -X stream: a data directory plus the
                               WAL to make it consistent, and PostgreSQL's backup_manifest
        wedsync-backup.json    ours: when, from which cluster, how big, verified

Plain format on purpose: ``pg_verifybackup`` checks every file against
``backup_manifest`` (PostgreSQL 15 verifies plain backups only), and a restore is one
directory copy. The JSON is written last, so a directory without it is an unfinished
backup that ``restore`` never picks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from ops.dr.pg import DrError, connect, hand_over, make_dir, pg_bin, run, tree_size

MANIFEST = "wedsync-backup.json"
DATA = "data"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _server_facts(url: str) -> dict[str, Any]:
    """What the manifest records about the source cluster, and its archiving state."""
    with connect(url) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('archive_mode'),"
            " current_setting('archive_command'), current_setting('archive_timeout'),"
            " (SELECT system_identifier::text FROM pg_control_system()),"
            " a.archived_count, a.failed_count, a.last_archived_wal, a.last_failed_wal"
            " FROM pg_stat_archiver a"
        ).fetchone()
    keys = (
        "server_version",
        "archive_mode",
        "archive_command",
        "archive_timeout",
        "system_identifier",
        "archived_count",
        "failed_count",
        "last_archived_wal",
        "last_failed_wal",
    )
    return dict(zip(keys, row, strict=True))


def _backup_label(data: Path) -> dict[str, str]:
    """The ``KEY: value`` lines of the backup's backup_label (start WAL, time, timeline)."""
    label = {}
    for line in (data / "backup_label").read_text().splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            label[key.strip()] = value.strip()
    return label


def base_backup(
    url: str,
    backups: Path,
    *,
    os_user: str,
    label: str = "wedsync-dr",
    fast_checkpoint: bool = True,
    allow_no_archive: bool = False,
    timeout: float = 6 * 3600,
) -> dict[str, Any]:
    """Take a base backup of the cluster at ``url`` (a role with REPLICATION) into a new
    timestamped directory under ``backups``; returns its manifest.

    Refuses a cluster without ``archive_mode``: such a backup restores only to its own
    end, never to a later point, and is no disaster recovery. ``fast_checkpoint`` starts
    at once (an I/O burst) rather than after a spread checkpoint (up to minutes).
    """
    facts = _server_facts(url)
    if facts["archive_mode"] == "off" and not allow_no_archive:
        raise DrError(
            "archive_mode is off on that cluster: a base backup without WAL archiving "
            "cannot be rolled forward (run archive-setup and restart it first)"
        )
    started = _now()
    make_dir(backups, os_user, mode=0o750)
    name = started.strftime("%Y%m%dT%H%M%SZ")
    folder = backups / name
    n = 1
    while folder.exists():  # two backups in one second
        n += 1
        folder = backups / f"{name}-{n}"
    make_dir(folder, os_user, mode=0o750)
    data = folder / DATA
    args = [
        pg_bin("pg_basebackup"),
        "-d",
        url,
        "-D",
        str(data),
        "-Fp",
        "-X",
        "stream",
        "-c",
        "fast" if fast_checkpoint else "spread",
        "-l",
        label,
        "--no-password",
    ]
    run(args, os_user=os_user, timeout=timeout)
    finished = _now()
    # Every file against backup_manifest's checksums, and the WAL it needs, parsed.
    run([pg_bin("pg_verifybackup"), str(data)], os_user=os_user, timeout=timeout)
    manifest_wal = json.loads((data / "backup_manifest").read_text())["WAL-Ranges"]
    backup_label = _backup_label(data)
    manifest = {
        "format": 1,
        "name": folder.name,
        "label": label,
        "started_at": started.isoformat(),
        # Restores to a target before this are refused: the backup is consistent only
        # from its end, which lies between started_at and finished_at.
        "finished_at": finished.isoformat(),
        "seconds": round((finished - started).total_seconds(), 3),
        "size_bytes": tree_size(data),
        "start_wal": backup_label.get("START WAL LOCATION"),
        "timeline": int(backup_label.get("START TIMELINE", "1")),
        "wal_ranges": manifest_wal,
        "verified_with": "pg_verifybackup",
        "source": {k: v for k, v in facts.items() if k != "archive_command"},
        "archive_command": facts["archive_command"],
    }
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)
    hand_over(folder / MANIFEST, os_user)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the backup in ``folder``; DrError if it is not a finished backup."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise DrError(f"{folder} holds no finished backup (no {MANIFEST})") from None
    manifest["path"] = str(folder)
    return manifest


def choose_backup(path: Path, target: dt.datetime | None) -> dict[str, Any]:
    """The backup to restore: ``path`` itself if it is one, else the newest finished
    backup under it that ends before ``target`` (any, for the latest state)."""
    if (path / MANIFEST).is_file():
        manifest = read_manifest(path)
        if target is not None and dt.datetime.fromisoformat(manifest["finished_at"]) > target:
            raise DrError(
                f"backup {path.name} finished at {manifest['finished_at']}, after the target "
                f"{target.isoformat()}: restore an older backup"
            )
        return manifest
    if not path.is_dir():
        raise DrError(f"{path} is neither a backup nor a directory of backups")
    candidates = []
    for folder in sorted(p for p in path.iterdir() if (p / MANIFEST).is_file()):
        manifest = read_manifest(folder)
        finished = dt.datetime.fromisoformat(manifest["finished_at"])
        if target is None or finished <= target:
            candidates.append((finished, manifest))
    if not candidates:
        when = f" finished before {target.isoformat()}" if target else ""
        raise DrError(f"no finished backup{when} under {path}")
    return max(candidates, key=lambda c: c[0])[1]
