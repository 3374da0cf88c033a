from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    """The WebSocket protocol, the event log, presence, fan-out and connection limits."""

    name = "realtime"
    verbose_name = "Realtime"

    def ready(self) -> None:
        from core import metrics, switches

        from . import signals  # noqa: F401  (connects the access-change receivers)
        from .node import sample_metrics
        from .selectors import READ_ONLY_MODE

        # The connections, subscriptions, presence and outbox gauges of this process.
        metrics.register_sampler(sample_metrics)
        switches.register(READ_ONLY_MODE)
