from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    """The WebSocket protocol, the event log, presence, fan-out and connection limits."""

    name = "realtime"
    verbose_name = "Realtime"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the access-change receivers)
