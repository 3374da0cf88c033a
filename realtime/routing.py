"""The WebSocket route: /ws/realtime/ behind the origin check and authentication; and
its Server-Sent Events fallback, /sse/realtime/, behind the same (``realtime.sse``)."""

from .auth import RealtimeAuthMiddleware
from .consumers import RealtimeConsumer
from .sse import SSE_PATH, SseAuthMiddleware, SseConnection

REALTIME_PATH = "/ws/realtime/"

websocket_application = RealtimeAuthMiddleware(RealtimeConsumer.as_asgi(), path=REALTIME_PATH)

sse_application = SseAuthMiddleware(SseConnection.as_asgi(), path=SSE_PATH)
