"""The client's exceptions: a request failed, the connection went away, or no reply came."""

from __future__ import annotations

from wedsync_client.wire import CLOSE_UNAUTHENTICATED


class ClientError(Exception):
    """A request failed: an error reply (``reply`` holds it) or a local failure."""

    def __init__(self, code: str, message: str = "", reply: dict | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.reply: dict = reply or {}


class ConnectionLost(ClientError):
    """The connection went away before the reply arrived (or was not open)."""


class RequestTimeout(ClientError, TimeoutError):
    """No reply within ``request_timeout`` (also a ``TimeoutError``)."""


def closed_error(close_code: int | None, close_reason: str = "") -> ClientError:
    """The error for a request cut off by the connection closing with ``close_code``."""
    if close_code == CLOSE_UNAUTHENTICATED:
        return ClientError("unauthorized", close_reason or "token missing, invalid or expired")
    return ConnectionLost("connection_lost", f"connection closed ({close_code})")
