from django.apps import AppConfig


class ScalingConfig(AppConfig):
    """Load prediction, scaling decisions and wedding-day operations."""

    name = "scaling"
    verbose_name = "Scaling"

    def ready(self) -> None:
        from core import switches

        from .selectors import WEDDING_DAY_MODE

        switches.register(WEDDING_DAY_MODE)
