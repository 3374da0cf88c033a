"""Errors that reach a client as a protocol error (PROTOCOL §8).

Services raise them; the consumer and the HTTP API turn them into an error reply with
the code, the message and any extra fields (for example the current item of a conflict).
"""

from __future__ import annotations

from typing import Any

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


class RealtimeError(Exception):
    """A failure the client is told about, with a stable code from PROTOCOL §8."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown realtime error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def as_dict(self) -> dict[str, Any]:
        """The fields an error reply carries: code, message and any extras."""
        return {"code": self.code, "message": self.message, **self.extra}


def topic_forbidden(topic: str) -> RealtimeError:
    """The one reply for a topic that does not exist or may not be seen (PROTOCOL §3)."""
    return RealtimeError("forbidden", f"topic {topic!r} is not available")
