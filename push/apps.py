from django.apps import AppConfig


class PushConfig(AppConfig):
    """Web Push: what a member must not miss, pushed to their browsers (ADR 0032)."""

    name = "push"
    verbose_name = "Web Push"

    def ready(self) -> None:
        from django.core import checks

        from realtime.services import event_stored

        from .conf import check_keys
        from .receivers import event_stored_push

        event_stored.connect(event_stored_push, dispatch_uid="push.event_stored_push")
        checks.register(check_keys)
