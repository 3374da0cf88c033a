from django.apps import AppConfig


class PlatformChangesConfig(AppConfig):
    """Changes to the platform's tables, read from PostgreSQL logical decoding, published
    as WedSync events (ADR 0027)."""

    name = "platform_changes"
    verbose_name = "Platform changes"
