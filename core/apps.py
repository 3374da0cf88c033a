from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Shared plumbing that any app may use and that imports no app: the Redis client
    factory, the circuit breaker, the two-tier cache, the database-thread executor, the
    HTTP helpers, the audited on/off switches and the metric instruments."""

    name = "core"
    verbose_name = "Core"
