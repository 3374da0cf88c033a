from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    """Health checks, metrics, alerts and the staff dashboard."""

    name = "monitoring"
    verbose_name = "Monitoring"
