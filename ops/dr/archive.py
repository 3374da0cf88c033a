"""Continuous WAL archiving: the commands PostgreSQL runs per WAL file, and their setup.

The archive is the RPO. A committed transaction is in the archive once the WAL segment
holding it is complete and copied; ``archive_timeout`` forces a segment switch that often
while there is traffic, so a lost primary (host, disk and its ``pg_wal`` gone) costs at
most about ``archive_timeout`` plus one copy of writes. The promise is 30 s (RPO ≤ 30 s of
events); 10 s leaves room for a slow copy and a segment switch mid-copy.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ops.dr.pg import conf_quote, hand_over, make_dir, postmaster_pid

# Seconds between forced WAL segment switches while there is traffic: the RPO bound
# (docs: RPO ≤ 30 s of events). Each switch archives a whole 16 MB segment, so a busy
# day archives up to ~5.8 GB an hour: size the archive (or compress it off-host) for it.
ARCHIVE_TIMEOUT_S = 10
# The settings file archive-setup writes into the data directory, included from
# postgresql.conf; a base backup carries it, so a restore turns archiving off again
# (``ops.dr.restore``) rather than let a restored copy write into the archive it reads.
CONF_NAME = "wedsync_dr_archive.conf"
INCLUDE_LINE = f"include_if_exists = {conf_quote(CONF_NAME)}"


def archive_command(archive_dir: Path) -> str:
    """The shell command PostgreSQL runs for each finished WAL file (``%p``: its path
    relative to the data directory, ``%f``: its name).

    Never a half-written file under the final name: copy to ``.tmp``, flush it, rename
    (atomic within one directory), flush the directory, so a crash mid-copy leaves only a
    ``.tmp`` that restore ignores. A name already archived succeeds only with identical
    contents: that is PostgreSQL retrying after a crash between our rename and its
    bookkeeping; different contents (a second cluster archiving here) fail loudly, and
    PostgreSQL keeps the segment and retries instead of overwriting history.
    """
    d = shlex.quote(str(archive_dir))
    return (
        f"if test -f {d}/%f; then cmp -s %p {d}/%f; "
        f"else cp %p {d}/%f.tmp && sync {d}/%f.tmp && mv {d}/%f.tmp {d}/%f && sync {d}; fi"
    )


def restore_command(archive_dir: Path) -> str:
    """The shell command a restoring cluster runs to fetch WAL file ``%f`` into ``%p``;
    a missing file fails, which is how recovery learns the archive has ended."""
    d = shlex.quote(str(archive_dir))
    return f"cp {d}/%f %p"


@dataclass(frozen=True)
class ArchiveSetup:
    """What archive-setup wrote, and whether the running server must restart for it."""

    conf_file: Path
    archive_dir: Path
    archive_timeout: int
    restart_needed: bool


def archive_setup(
    pgdata: Path, archive_dir: Path, *, os_user: str, timeout: int = ARCHIVE_TIMEOUT_S
) -> ArchiveSetup:
    """Configure continuous archiving of the cluster on ``pgdata`` into ``archive_dir``.

    Writes the settings to their own file beside postgresql.conf and includes it once
    (run it again to change them); ``archive_mode`` and ``wal_level`` take effect at the
    next server start. The archive directory should be storage that outlives the host.
    """
    if not (pgdata / "PG_VERSION").is_file():
        raise ValueError(f"{pgdata} is not a PostgreSQL data directory (no PG_VERSION)")
    if not 1 <= timeout <= 30:
        raise ValueError("archive_timeout must be 1 to 30 s: the RPO promise is 30 s")
    archive_dir = archive_dir.resolve()
    make_dir(archive_dir, os_user)
    conf = pgdata / CONF_NAME
    conf.write_text(
        "# Written by `python -m ops.dr archive-setup`: continuous WAL archiving (WedSync DR).\n"
        "# archive_timeout bounds the RPO (a segment switch at least this often while\n"
        "# writes happen); restores read this directory with restore_command.\n"
        "wal_level = 'replica'\n"
        "archive_mode = 'on'\n"
        f"archive_command = {conf_quote(archive_command(archive_dir))}\n"
        f"archive_timeout = '{timeout}s'\n"
    )
    hand_over(conf, os_user)
    main_conf = pgdata / "postgresql.conf"
    text = main_conf.read_text()
    if INCLUDE_LINE not in text.splitlines():
        with main_conf.open("a") as fh:
            fh.write(("" if text.endswith("\n") else "\n") + INCLUDE_LINE + "\n")
    return ArchiveSetup(
        conf_file=conf,
        archive_dir=archive_dir,
        archive_timeout=timeout,
        restart_needed=postmaster_pid(pgdata) is not None,
    )
