"""WebSocket routes, wrapped in the origin check, session and token authentication."""

from channels.routing import URLRouter
from django.urls import path

from .auth import realtime_auth_stack
from .consumers import RealtimeConsumer

websocket_urlpatterns = [
    path("ws/realtime/", RealtimeConsumer.as_asgi()),
]

websocket_application = realtime_auth_stack(URLRouter(websocket_urlpatterns))
