"""WedSync Realtime's Python client: one WebSocket, subscriptions with replay, publish with
idempotency keys, presence and acks (docs/client.md). It needs only ``websockets`` and
``orjson``; it imports nothing of the server.

``client`` holds the connection (reconnects, requests), ``streams`` each topic's ordering
and gap buffering, ``backoff`` the retry delays, ``errors`` the exceptions and ``wire``
the protocol's constants."""

from wedsync_client.client import RealtimeClient
from wedsync_client.errors import ClientError, ConnectionLost, RequestTimeout

__all__ = ["ClientError", "ConnectionLost", "RealtimeClient", "RequestTimeout"]
