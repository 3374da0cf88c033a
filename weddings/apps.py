from django.apps import AppConfig


class WeddingsConfig(AppConfig):
    """The wedding domain: suppliers, weddings, bookings and the timeline.

    The label stays ``wedsync`` (the app's name before it moved out of the composition
    root): its tables, migration history, content types and permissions keep their names,
    so an existing database migrates with nothing to do (ADR 0014)."""

    name = "weddings"
    label = "wedsync"
    verbose_name = "Weddings"

    def ready(self) -> None:
        from . import caching  # noqa: F401  (connects the access-cache receivers)
