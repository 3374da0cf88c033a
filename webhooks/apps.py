from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Outbound webhooks: stored events POSTed to staff-registered endpoints (ADR 0023)."""

    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from realtime.services import event_stored

        from .receivers import event_stored_kick

        event_stored.connect(event_stored_kick, dispatch_uid="webhooks.event_stored_kick")
