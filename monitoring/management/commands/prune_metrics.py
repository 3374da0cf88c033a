"""``manage.py prune_metrics``: delete the metric files of processes that no longer run."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Delete the metric files (PROMETHEUS_MULTIPROC_DIR) of processes that no longer run; "
        "run it before starting a host's processes so the directory does not grow."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        from core.metrics import metrics_dir
        from monitoring.figures import prune_dead_processes

        dead = prune_dead_processes(counters=True)
        self.stdout.write(f"{metrics_dir()}: removed the files of {len(dead)} dead process(es)")
