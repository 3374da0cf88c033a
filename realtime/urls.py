"""HTTP routes of the realtime API (PROTOCOL §9)."""

from django.urls import path

from . import api

urlpatterns = [
    path("api/realtime/token", api.token_view, name="realtime-token"),
    path("api/realtime/ticket", api.ticket_view, name="realtime-ticket"),
    path("api/realtime/connections", api.connections_view, name="realtime-connections"),
    path("api/weddings/", api.weddings_view, name="weddings"),
    path("api/weddings/<int:wedding_id>/", api.wedding_view, name="wedding-snapshot"),
    path("api/weddings/<int:wedding_id>/events", api.events_view, name="wedding-events"),
]
