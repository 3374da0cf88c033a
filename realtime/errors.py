"""Errors that reach a client as a protocol error (PROTOCOL §8).

Services raise them; the consumer and the HTTP API turn them into an error reply with
the code, the message and any extra fields (for example the current item of a conflict).
"""

from __future__ import annotations

from typing import Any

from core.http import ApiError

# Error codes of PROTOCOL §8, and the HTTP status each maps to in the HTTP API.
HTTP_STATUS = {
    "bad_frame": 400,
    "too_large": 413,
    "unknown_topic": 404,
    "forbidden": 404,  # identical to unknown: nothing about a hidden topic is revealed
    "invalid_payload": 400,
    "conflict": 409,
    "rate_limited": 429,
    "limit_reached": 429,
    "unavailable": 503,
}


class RealtimeError(ApiError):
    """A failure the client is told about, with a stable code from PROTOCOL §8; the HTTP
    API answers it with the code's status (an ``ApiError``)."""

    def __init__(self, code: str, message: str, /, **extra: Any) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown realtime error code {code!r}")
        super().__init__(code, message, HTTP_STATUS[code], **extra)

    @property
    def http_status(self) -> int:
        return self.status


def topic_forbidden(topic: str) -> RealtimeError:
    """The one reply for a topic that does not exist or may not be seen (PROTOCOL §3)."""
    return RealtimeError("forbidden", f"topic {topic!r} is not available")


def role_forbidden(message: str, /, **extra: Any) -> RealtimeError:
    """A refusal by the role matrix (``weddings.roles``) on a topic the user may see:
    nothing is hidden there, so over HTTP it is a 403 (the code is ``forbidden`` either
    way, as on the WebSocket)."""
    err = RealtimeError("forbidden", message, **extra)
    err.status = 403
    return err
