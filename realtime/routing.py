"""The WebSocket route: /ws/realtime/ behind the origin check and authentication."""

from .auth import RealtimeAuthMiddleware
from .consumers import RealtimeConsumer

REALTIME_PATH = "/ws/realtime/"

websocket_application = RealtimeAuthMiddleware(RealtimeConsumer.as_asgi(), path=REALTIME_PATH)
