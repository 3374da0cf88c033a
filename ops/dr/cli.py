"""``python -m ops.dr``: archive-setup, base-backup, restore, verify (docs/operations.md).

Each subcommand prints a short report for a person, or with ``--json`` only a JSON
document on stdout (what the tests and scripts read). Exit codes: 0 done, 1 ``verify``
found the log broken, 2 the step failed (the message says why).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import psycopg

from ops.dr.archive import ARCHIVE_TIMEOUT_S, archive_setup
from ops.dr.backup import base_backup
from ops.dr.pg import DEFAULT_OS_USER, DrError
from ops.dr.restore import Restored, restore
from ops.dr.verify import verify

EXIT_BROKEN, EXIT_ERROR = 1, 2


def _time(value: str) -> dt.datetime | None:
    """An ISO 8601 time with its UTC offset, or ``latest`` (None)."""
    if value == "latest":
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    if when.tzinfo is None:
        # A guessed zone on a recovery target silently restores to the wrong hour.
        raise argparse.ArgumentTypeError(f"give a UTC offset (…Z or …+01:00): {value!r}")
    return when


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops.dr", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    owner = argparse.ArgumentParser(add_help=False)
    owner.add_argument(
        "--os-user",
        default=DEFAULT_OS_USER,
        help="run PostgreSQL's tools as this user when run as root (default postgres)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print only a JSON document")

    p = sub.add_parser(
        "archive-setup",
        parents=[owner, as_json],
        help="configure continuous WAL archiving on a cluster",
    )
    p.add_argument("--pgdata", type=Path, required=True, help="the cluster's data directory")
    p.add_argument("--archive-dir", type=Path, required=True, help="where WAL files go")
    p.add_argument(
        "--timeout",
        type=int,
        default=ARCHIVE_TIMEOUT_S,
        help=f"archive_timeout in seconds, the RPO bound (default {ARCHIVE_TIMEOUT_S})",
    )

    p = sub.add_parser(
        "base-backup",
        parents=[owner, as_json],
        help="pg_basebackup into a timestamped directory, verified",
    )
    p.add_argument(
        "--dsn",
        default=os.environ.get("DR_SOURCE_URL", ""),
        help="the cluster, as a role with REPLICATION (default $DR_SOURCE_URL)",
    )
    p.add_argument("--backups", type=Path, required=True, help="the directory of backups")
    p.add_argument("--label", default="wedsync-dr")
    p.add_argument(
        "--spread-checkpoint",
        action="store_true",
        help="wait for a spread checkpoint instead of an immediate one",
    )
    p.add_argument(
        "--allow-no-archive",
        action="store_true",
        help="back up a cluster without archive_mode (restores only to its end)",
    )

    p = sub.add_parser(
        "restore",
        parents=[owner, as_json],
        help="point-in-time restore into a fresh data directory",
    )
    p.add_argument(
        "--backup",
        type=Path,
        required=True,
        help="a backup, or the directory of backups (the newest fitting one)",
    )
    p.add_argument("--archive-dir", type=Path, required=True, help="the WAL archive")
    p.add_argument("--pgdata", type=Path, required=True, help="a new or empty directory")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--target-time",
        type=_time,
        default=None,
        metavar="ISO|latest",
        help="restore to this time (with offset); default: the latest archived",
    )
    p.add_argument(
        "--socket-dir",
        type=Path,
        default=None,
        help="unix_socket_directories of the restored cluster",
    )
    p.add_argument(
        "--archive-to",
        type=Path,
        default=None,
        help="a NEW archive for the restored cluster (default: archiving off)",
    )
    p.add_argument("--db-user", default="postgres", help="the role to check promotion with")
    p.add_argument("--timeout", type=float, default=3600, help="seconds for the whole restore")

    p = sub.add_parser(
        "verify",
        parents=[as_json],
        help="check the event log: gapless, cursors, nothing after the target",
    )
    p.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL", ""),
        help="the database to check (default $DATABASE_URL)",
    )
    p.add_argument(
        "--target-time",
        type=_time,
        default=None,
        metavar="ISO",
        help="fail on any event created after this time",
    )
    p.add_argument(
        "--clock-skew",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds the app hosts' clocks may run ahead of the target's clock",
    )
    return parser


def _print(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    print(json.dumps(document, default=str) if args.json else text, flush=True)


def _next_steps(done: Restored) -> str:
    as_of = done.replayed_to or done.target_time or "the backup's end"
    host_port = f"<host>:{done.port}"
    return "\n".join(
        [
            "next:",
            f"  1. DATABASE_URL=postgres://<app user>@{host_port}/<db> python -m ops.dr verify"
            + (f" --target-time {done.target_time}" if done.target_time else ""),
            f"  2. with that DATABASE_URL: python manage.py stream_epoch --bump "
            f'--reason "restored to {as_of}"',
            "  3. point every server's DATABASE_URL at it and restart them in turn (SIGTERM)",
            "  4. archiving: "
            + (
                f"on, into {done.archive_to}; take a base backup now"
                if done.archive_to
                else "OFF - run archive-setup with a new archive, restart, and take a base backup"
            ),
        ]
    )


def _archive_setup(args: argparse.Namespace) -> int:
    done = archive_setup(args.pgdata, args.archive_dir, os_user=args.os_user, timeout=args.timeout)
    doc = {k: str(v) if isinstance(v, Path) else v for k, v in vars(done).items()}
    text = (
        f"archiving into {done.archive_dir} every {done.archive_timeout} s at most "
        f"({done.conf_file})"
    )
    if done.restart_needed:
        text += "\nthe server is running: restart it (pg_ctl restart) for archive_mode"
    _print(args, doc, text)
    return 0


def _base_backup(args: argparse.Namespace) -> int:
    if not args.dsn:
        raise DrError("--dsn (or DR_SOURCE_URL) is required")
    manifest = base_backup(
        args.dsn,
        args.backups,
        os_user=args.os_user,
        label=args.label,
        fast_checkpoint=not args.spread_checkpoint,
        allow_no_archive=args.allow_no_archive,
    )
    _print(
        args,
        manifest,
        f"backup {manifest['name']} under {args.backups}: "
        f"{manifest['size_bytes'] / 1e6:.1f} MB in {manifest['seconds']:.1f} s, verified",
    )
    return 0


def _restore(args: argparse.Namespace) -> int:
    done = restore(
        args.backup,
        args.archive_dir,
        args.pgdata,
        port=args.port,
        os_user=args.os_user,
        target=args.target_time,
        socket_dir=args.socket_dir,
        archive_to=args.archive_to,
        db_user=args.db_user,
        timeout=args.timeout,
    )
    s = done.seconds
    _print(
        args,
        done.as_dict(),
        f"restored backup {done.backup} into {done.pgdata}, port {done.port}, "
        f"timeline {done.timeline}; data as of {done.replayed_to or 'the backup'}\n"
        f"copy {s['copy']:.1f} s, verify {s['verify']:.1f} s, recovery "
        f"{s['recovery']:.1f} s, total {s['total']:.1f} s\n" + _next_steps(done),
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    if not args.dsn:
        raise DrError("--dsn (or DATABASE_URL) is required")
    report = verify(args.dsn, target=args.target_time, skew_s=args.clock_skew)
    _print(args, report.as_dict(), report.text())
    return 0 if report.ok else EXIT_BROKEN


COMMANDS = {
    "archive-setup": _archive_setup,
    "base-backup": _base_backup,
    "restore": _restore,
    "verify": _verify,
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one subcommand; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DrError, ValueError, OSError, psycopg.Error) as exc:
        print(f"ops.dr {args.command}: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
