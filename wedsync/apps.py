from django.apps import AppConfig


class WedsyncConfig(AppConfig):
    """The wedding domain: suppliers, weddings, bookings and the timeline."""

    name = "wedsync"
    verbose_name = "Weddings"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
