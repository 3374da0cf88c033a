"""HTTP routes of Web Push (docs/web.md, "Push")."""

from django.urls import path

from . import views

urlpatterns = [
    path("api/push/key", views.key_view, name="push-key"),
    path("api/push/subscriptions", views.subscriptions_view, name="push-subscriptions"),
    path("api/push/ack", views.ack_view, name="push-ack"),
]
