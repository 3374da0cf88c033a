from django.apps import AppConfig


class ServerConfig(AppConfig):
    """The composition root: settings, URLs, the ASGI application, the server process and
    the operator commands that start the stack (``runstack``, ``seed_demo``)."""

    name = "wedsync"
    label = "wedsync_root"
    verbose_name = "Server"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
