"""The command line that serves ``wedsync.asgi:application`` (docs/adr/0003-asgi-server.md)."""

from __future__ import annotations

import sys

SERVERS = ("uvicorn", "daphne")


def asgi_server_command(host: str, port: int, server: str = "uvicorn") -> list[str]:
    """The argv of one ASGI server process bound to host:port.

    uvicorn is the default: its WebSocket send waits while the client's socket buffer is
    full, so a slow client backs up into its own bounded outbox (closed with 1013)
    instead of the server's memory. It runs through ``wedsync.serve``, which drains the
    connections on SIGTERM (close 1012 after the frames in flight).
    """
    if server == "uvicorn":
        return [
            sys.executable, "-m", "wedsync.serve",
            "--host", host, "--port", str(port),
            "--log-level", "warning",
        ]  # fmt: skip
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", host, "-p", str(port),
                "wedsync.asgi:application"]  # fmt: skip
    raise ValueError(f"unknown ASGI server {server!r}; choose one of {', '.join(SERVERS)}")
