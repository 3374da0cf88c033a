"""Disaster recovery as code for the event log's PostgreSQL (issue #16).

``python -m ops.dr`` wraps PostgreSQL's own tools so that each recovery step is one
command an operator can run at 3 a.m. on a Saturday and a test can run in CI:

- ``archive-setup``: continuous WAL archiving into a directory (``ops.dr.archive``);
- ``base-backup``: ``pg_basebackup`` into a timestamped directory, verified against its
  manifest (``ops.dr.backup``);
- ``restore``: point in time (or the latest archived state) into a fresh data directory,
  started and promoted (``ops.dr.restore``);
- ``verify``: the restored event log is gapless and ends no later than the target
  (``ops.dr.verify``).

Plain Python and subprocess calls; ``verify`` and ``restore`` speak SQL through psycopg.
No Django: a restore must not depend on the application starting.
"""
