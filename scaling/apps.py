from django.apps import AppConfig


class ScalingConfig(AppConfig):
    """Load prediction, scaling decisions and wedding-day operations."""

    name = "scaling"
    verbose_name = "Scaling"
