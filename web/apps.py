from django.apps import AppConfig


class WebConfig(AppConfig):
    """The vendor web app: sign-in, "My Saturday" and the live wedding page."""

    name = "web"
    verbose_name = "Vendor web app"
