"""PostgreSQL's tools, run the way the recovery steps need them.

PostgreSQL refuses to run its server as root, and the files of a data directory must
belong to the server's OS user. When this toolkit runs as root (a recovery shell, CI) it
therefore runs every PostgreSQL binary as ``os_user`` (``postgres`` by default) and hands
the directories it creates to that user; run as anyone else it runs them as itself.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

DEFAULT_OS_USER = "postgres"


class DrError(Exception):
    """A recovery step failed; the message says what and, where known, what to do."""


def bindir() -> Path:
    """The directory of one PostgreSQL installation's binaries.

    One directory for every tool, never a mix from ``PATH``: ``pg_basebackup`` and
    ``pg_verifybackup`` must match the server's major version. ``PG_BINDIR`` wins; then
    the directory ``pg_ctl`` really lives in (Debian keeps it out of ``PATH`` or links
    it), then ``pg_config --bindir``, then the newest ``/usr/lib/postgresql/*/bin``.
    """
    if configured := os.environ.get("PG_BINDIR"):
        return Path(configured)
    if pg_ctl := shutil.which("pg_ctl"):
        return Path(os.path.realpath(pg_ctl)).parent
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidate = Path(out.stdout.strip())
        if out.returncode == 0 and (candidate / "pg_ctl").exists():
            return candidate
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    raise DrError("PostgreSQL's binaries were not found: set PG_BINDIR (e.g. .../15/bin)")


def pg_bin(name: str) -> str:
    """The path of PostgreSQL tool ``name`` (``pg_ctl``, ``pg_basebackup`` ...)."""
    path = bindir() / name
    if not path.exists():
        raise DrError(f"{path} does not exist: set PG_BINDIR to a complete installation")
    return str(path)


def _as_user(os_user: str) -> dict[str, Any]:
    """Popen arguments that run a child as ``os_user`` when we are root, else nothing."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(os_user)
    except KeyError:
        raise DrError(f"OS user {os_user!r} does not exist (--os-user)") from None
    env = {**os.environ, "HOME": entry.pw_dir, "USER": os_user, "LOGNAME": os_user}
    # cwd "/": the tools chdir nowhere, but refuse to start in a directory (/root) the
    # user cannot read.
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "env": env, "cwd": "/"}


def run(
    args: list[str], *, os_user: str, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool to completion; raises DrError with its output if it fails."""
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **_as_user(os_user),
        )
    except subprocess.TimeoutExpired as exc:
        raise DrError(f"{Path(args[0]).name} did not finish in {timeout:g} s") from exc
    if done.returncode != 0:
        raise DrError(
            f"{Path(args[0]).name} failed (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr).strip()[-3000:]}"
        )
    return done


def hand_over(path: Path, os_user: str, *, recursive: bool = False) -> None:
    """Give ``path`` (and below, if ``recursive``) to ``os_user`` when we are root."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(os_user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    if recursive:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(
                    os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False
                )


def make_dir(path: Path, os_user: str, *, mode: int = 0o700) -> Path:
    """Create ``path`` (and its parents) for ``os_user``; an existing one is kept."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    hand_over(path, os_user)
    return path


def conf_quote(value: str) -> str:
    """``value`` as a quoted postgresql.conf string (quotes doubled, backslashes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def dsn(
    port: int, *, host: str = "127.0.0.1", user: str = "postgres", dbname: str = "postgres"
) -> str:
    """A libpq URL for a cluster this toolkit started (its auth comes from pg_hba/.pgpass)."""
    return f"postgresql://{user}@{host}:{port}/{dbname}"


def connect(url: str, *, timeout: float = 5) -> psycopg.Connection:
    """An autocommit connection; ``application_name`` names the toolkit in pg_stat_activity."""
    return psycopg.connect(
        url, autocommit=True, connect_timeout=max(1, int(timeout)), application_name="ops.dr"
    )


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the postmaster running on ``pgdata``, or None when none runs there."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's process: it exists
        return pid
    return pid


def start(
    pgdata: Path,
    *,
    os_user: str,
    log: Path,
    port: int | None = None,
    socket_dir: Path | None = None,
    timeout: float = 120,
) -> None:
    """Start the cluster with ``pg_ctl`` and wait until it accepts connections (a cluster
    in archive recovery: until it is consistent and takes read-only ones)."""
    options = []
    if port is not None:
        options.append(f"-p {port}")
    if socket_dir is not None:
        options.append(f"-k {socket_dir}")
    args = [
        pg_bin("pg_ctl"),
        "start",
        "-D",
        str(pgdata),
        "-l",
        str(log),
        "-w",
        "-t",
        str(int(timeout)),
    ]
    if options:
        args += ["-o", " ".join(options)]
    try:
        run(args, os_user=os_user, timeout=timeout + 10)
    except DrError as exc:
        raise DrError(f"{exc}\n--- {log} ---\n{tail(log)}") from None


def stop(pgdata: Path, *, os_user: str, mode: str = "fast", timeout: float = 60) -> None:
    """Stop the cluster on ``pgdata`` if it runs (``fast``: roll back sessions, checkpoint)."""
    if postmaster_pid(pgdata) is None:
        return
    run(
        [pg_bin("pg_ctl"), "stop", "-D", str(pgdata), "-m", mode, "-w", "-t", str(int(timeout))],
        os_user=os_user,
        timeout=timeout + 10,
    )


def tail(log: Path, lines: int = 30) -> str:
    """The last lines of a server log, for an error message."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass(frozen=True)
class Promoted:
    """A cluster out of recovery: its timeline and the last transaction it replayed."""

    timeline: int
    replayed_to: str | None  # ISO time of the last commit replayed; None if none was
    seconds: float


def wait_promoted(pgdata: Path, url: str, *, log: Path, timeout: float) -> Promoted:
    """Wait until the cluster on ``pgdata`` has left recovery and takes writes.

    Fails as soon as the postmaster has gone (a restore that cannot reach its target
    stops the server with FATAL) instead of waiting out the timeout.
    """
    started = time.monotonic()
    deadline = started + timeout
    last_error = "no connection attempt yet"
    while time.monotonic() < deadline:
        if postmaster_pid(pgdata) is None:
            raise DrError(f"the server on {pgdata} stopped during recovery:\n{tail(log)}")
        try:
            with connect(url, timeout=2) as conn:
                in_recovery, replayed, walfile = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp(),"
                    " CASE WHEN pg_is_in_recovery() THEN NULL"
                    " ELSE pg_walfile_name(pg_current_wal_lsn()) END"
                ).fetchone()
            if not in_recovery:
                return Promoted(
                    timeline=int(walfile[:8], 16),
                    replayed_to=replayed.isoformat() if replayed else None,
                    seconds=time.monotonic() - started,
                )
            last_error = "still in recovery"
        except psycopg.OperationalError as exc:
            last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        time.sleep(0.2)
    raise DrError(
        f"the server on {pgdata} was not promoted within {timeout:g} s ({last_error}):\n{tail(log)}"
    )


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (a backup's or a data directory's size)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total
