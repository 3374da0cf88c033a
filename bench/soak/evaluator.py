"""The soak's alert evaluation: the minute task's services, in a process of the soak's world.

Why a process of its own and not Celery beat: the evaluation must read the metric files of
the soak's server (a private ``PROMETHEUS_MULTIPROC_DIR``, so other runs on the machine do
not add to its figures), use the soak's private Redis (the connection registry, the
breakers) and run on the soak's schedule (``--evaluate-every``; 60 s like beat by
default); the command's own process has the machine's Redis in its settings. A beat and a
worker on the private Redis would also lose their broker at every Redis restart, which
is the soak's fault, not the product's. So the soak starts this with the server's
environment and sends it one line per evaluation:

``baseline``  store a snapshot only (the figures of the next one are taken from it)
``tick``      what ``monitoring.tasks.record_snapshot`` does: store the snapshot, evaluate
              the rules (``alerts_evaluate``), chase acknowledgements, escalate

Each line is answered with one JSON line: ``{"ok": true, "changes": {...}, ...}`` or
``{"ok": false, "error": "..."}``. ``beat_gap_s`` is the time since this process's
previous evaluation, not since the database's latest snapshot, which an earlier run on
the same database may have left hours ago. End of stdin ends the process.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wedsync.settings")
    import django

    django.setup()
    from django.db import close_old_connections
    from django.utils import timezone

    from monitoring import services

    previous = None
    for line in sys.stdin:
        command = line.strip()
        if not command:
            continue
        try:
            now = timezone.now()
            snapshot = services.snapshot_record(now=now)
            answer = {
                "ok": True,
                "at": now.timestamp(),
                "breakers_open": snapshot.breakers_open,
                "error_rate": snapshot.error_rate,
                "latency_p95": snapshot.latency_p95,
                "connections": snapshot.connections,
                "changes": {},
            }
            if command == "tick":
                gap = (now - previous).total_seconds() if previous is not None else None
                changes = services.alerts_evaluate(snapshot=snapshot, beat_gap_s=gap, now=now)
                changes |= services.acks_check(now=now)
                services.alerts_escalate(now=now)
                answer["changes"] = {rule: change for rule, change in changes.items() if change}
            previous = now
        except Exception as exc:
            answer = {"ok": False, "error": f"{exc!r}", "trace": traceback.format_exc()[-2000:]}
        finally:
            close_old_connections()
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
