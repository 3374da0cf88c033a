"""Point-in-time restore into a fresh data directory: copy, verify, recover, promote.

Never over an existing cluster: the data directory must be new or empty, so the old
one (the evidence, and the fallback) stays as it was. The restored cluster archives
nowhere unless ``archive_to`` names a new archive: a restored copy that promotes writes
a new timeline's history, and in the archive it was restored from that history would
redirect every later "latest" restore onto the copy's timeline (a drill's included).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ops.dr.archive import CONF_NAME, archive_setup, restore_command
from ops.dr.backup import DATA, choose_backup
from ops.dr.pg import (
    DrError,
    conf_quote,
    dsn,
    hand_over,
    make_dir,
    pg_bin,
    postmaster_pid,
    run,
    start,
    tree_size,
    wait_promoted,
)

LOG_NAME = "wedsync-restore.log"


@dataclass(frozen=True)
class Restored:
    """A restored cluster, running and promoted, and what the restore took."""

    pgdata: str
    port: int
    url: str
    backup: str
    backup_size_bytes: int
    target_time: str | None  # None: the latest state in the archive
    replayed_to: str | None  # the last commit replayed (the time the data is as of)
    timeline: int
    seconds: dict[str, float]  # copy, verify, recovery (start to promoted), total
    archive_to: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fresh(pgdata: Path) -> None:
    if pgdata.exists() and (not pgdata.is_dir() or any(pgdata.iterdir())):
        raise DrError(f"{pgdata} exists and is not empty: restore only into a fresh directory")


def _copy(source: Path, pgdata: Path, os_user: str) -> None:
    if any((source / "pg_tblspc").iterdir()):
        # A plain backup keeps tablespaces at their original absolute paths, which a
        # restore on the same host would share with the source: out of this toolkit.
        raise DrError("the backup has tablespaces: restore it by hand (--tablespace-mapping)")
    make_dir(pgdata, os_user)
    shutil.copytree(source, pgdata, symlinks=True, dirs_exist_ok=True)
    hand_over(pgdata, os_user, recursive=True)
    pgdata.chmod(0o700)


def _recovery_settings(
    *,
    archive_dir: Path,
    target: dt.datetime | None,
    port: int,
    socket_dir: Path | None,
    backup: str,
) -> str:
    lines = [
        f"# Added by `python -m ops.dr restore` from backup {backup} at "
        f"{dt.datetime.now(dt.UTC).isoformat()}",
        f"restore_command = {conf_quote(restore_command(archive_dir))}",
        "recovery_target_timeline = 'latest'",
        # The default with a target is 'pause': a restore would sit read-only forever.
        "recovery_target_action = 'promote'",
        f"port = {port}",
    ]
    if target is not None:
        # Inclusive (the default): a transaction committed exactly at the target is kept.
        lines.append(f"recovery_target_time = {conf_quote(target.isoformat())}")
    if socket_dir is not None:
        lines.append(f"unix_socket_directories = {conf_quote(str(socket_dir))}")
    return "\n".join(lines) + "\n"


def _archiving_off(pgdata: Path, os_user: str, backup: str) -> None:
    """Replace the copied archive settings (the source's archive) with archiving off."""
    conf = pgdata / CONF_NAME
    conf.write_text(
        f"# Restored from backup {backup}: archiving is off so that this copy never\n"
        "# writes into the archive it was restored from. `python -m ops.dr archive-setup`\n"
        "# with a NEW archive directory turns it on (then take a base backup).\n"
        "archive_mode = 'off'\n"
    )
    hand_over(conf, os_user)


def _effective(pgdata: Path, name: str, os_user: str) -> str:
    """A setting's value as the server will read it at start (``postgres -C``)."""
    out = run([pg_bin("postgres"), "-D", str(pgdata), "-C", name], os_user=os_user, timeout=60)
    return out.stdout.strip()


def restore(
    backup: Path,
    archive_dir: Path,
    pgdata: Path,
    *,
    port: int,
    os_user: str,
    target: dt.datetime | None = None,
    socket_dir: Path | None = None,
    archive_to: Path | None = None,
    db_user: str = "postgres",
    timeout: float = 3600,
) -> Restored:
    """Restore the newest fitting backup under ``backup`` (or that backup) into the new
    ``pgdata``, roll it forward from ``archive_dir`` to ``target`` (None: as far as the
    archive goes), start it on ``port`` and wait until it is promoted and takes writes.
    """
    began = time.monotonic()
    if target is not None and target.tzinfo is None:
        raise DrError("the target time needs a UTC offset (e.g. 2026-05-23T14:05:00+00:00)")
    archive_dir, pgdata = archive_dir.resolve(), pgdata.resolve()
    if archive_to is not None and archive_to.resolve() == archive_dir:
        raise DrError("--archive-to must be a new archive, not the one restored from")
    _fresh(pgdata)
    if not archive_dir.is_dir():
        raise DrError(f"archive directory {archive_dir} does not exist")
    manifest = choose_backup(backup, target)

    _copy(Path(manifest["path"]) / DATA, pgdata, os_user)
    copied = time.monotonic()
    # The copy against the backup's own manifest: catches a damaged backup (or copy)
    # before hours of replay rather than after.
    run([pg_bin("pg_verifybackup"), str(pgdata)], os_user=os_user, timeout=timeout)
    verified = time.monotonic()

    if archive_to is not None:
        archive_setup(pgdata, archive_to, os_user=os_user)
    else:
        _archiving_off(pgdata, os_user, manifest["name"])
    settings = _recovery_settings(
        archive_dir=archive_dir,
        target=target,
        port=port,
        socket_dir=socket_dir,
        backup=manifest["name"],
    )
    with (pgdata / "postgresql.auto.conf").open("a") as fh:
        fh.write(settings)
    (pgdata / "standby.signal").unlink(missing_ok=True)
    (pgdata / "recovery.signal").touch()
    hand_over(pgdata / "recovery.signal", os_user)
    if archive_to is None and _effective(pgdata, "archive_mode", os_user) != "off":
        raise DrError(
            "archive_mode would still be on in the restored cluster (set outside "
            f"{CONF_NAME}, e.g. by ALTER SYSTEM): give --archive-to a new archive"
        )

    log = pgdata / LOG_NAME
    if postmaster_pid(pgdata) is not None:  # cannot be: the directory was fresh
        raise DrError(f"a server already runs on {pgdata}")
    starting = time.monotonic()
    start(pgdata, os_user=os_user, log=log, timeout=timeout)
    url = dsn(port, user=db_user)
    remaining = max(10.0, timeout - (time.monotonic() - began))
    promoted = wait_promoted(pgdata, url, log=log, timeout=remaining)
    done = time.monotonic()
    return Restored(
        pgdata=str(pgdata),
        port=port,
        url=url,
        backup=manifest["name"],
        backup_size_bytes=int(manifest.get("size_bytes") or tree_size(pgdata)),
        target_time=target.isoformat() if target else None,
        replayed_to=promoted.replayed_to,
        timeline=promoted.timeline,
        seconds={
            "copy": round(copied - began, 3),
            "verify": round(verified - copied, 3),
            "recovery": round(done - starting, 3),
            "total": round(done - began, 3),
        },
        archive_to=str(archive_to.resolve()) if archive_to else None,
    )
