from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    """Health checks, metrics, alerts and the staff dashboard."""

    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        # Celery task metrics in every worker; the sampler starts with the first task of
        # each worker process (prefork children included).
        from celery import signals

        from core import metrics

        signals.task_prerun.connect(metrics.task_started, weak=False)
        signals.task_postrun.connect(metrics.task_finished, weak=False)
        signals.worker_process_shutdown.connect(metrics.process_exiting, weak=False)
