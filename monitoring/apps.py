from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    """Health checks, metrics, alerts and the staff dashboard."""

    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        # Celery task metrics in every worker; the sampler starts with the first task of
        # each worker process (prefork children included).
        from celery import signals

        from core import breaker, metrics

        signals.task_prerun.connect(metrics.task_started, weak=False)
        signals.task_postrun.connect(metrics.task_finished, weak=False)
        signals.worker_process_shutdown.connect(metrics.process_exiting, weak=False)
        # The Redis breakers' state gauge and opens counter.
        breaker.add_change_listener(metrics.breaker_changed)

        # Scaling reads the measured load from the minute snapshots, and the actuator's
        # failures open an alert: monitoring plugs into scaling, never the reverse.
        from scaling import readings
        from scaling.signals import decision_applied

        from .selectors import SnapshotReader, fast_reading
        from .services import scaling_decision_applied

        readings.set_reader(SnapshotReader())
        # The fast reactive path's live figures (the emergency check every few seconds).
        readings.set_fast_reader(fast_reading)
        decision_applied.connect(scaling_decision_applied, dispatch_uid="monitoring")
