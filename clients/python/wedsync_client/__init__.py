"""WedSync Realtime's Python client: one WebSocket, subscriptions with replay, publish with
idempotency keys, presence and acks (docs/client.md). It needs only ``websockets`` and
``orjson``; it imports nothing of the server."""

from wedsync_client.client import ClientError, RealtimeClient

__all__ = ["ClientError", "RealtimeClient"]
