"""The production ASGI server: uvicorn serving ``wedsync.asgi:application``, with a
graceful shutdown that drains WebSocket connections (docs/operations.md).

``python -m wedsync.serve --host 0.0.0.0 --port 8000``. On SIGTERM (or Ctrl-C) the
process stops accepting connections, refuses new publishes, lets the frames in flight
finish (up to ``REALTIME_SHUTDOWN_GRACE`` seconds; an in-flight publish is stored and
acknowledged), then closes every WebSocket with 1012 after what is queued for it, so
each client reconnects to another process with ``since`` and misses nothing. Plain
uvicorn would close them at once, dropping replies already computed.
"""

from __future__ import annotations

import argparse
import socket

import uvicorn


class GracefulServer(uvicorn.Server):
    """uvicorn's server with the realtime connections drained before its own shutdown."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # stop accepting first; uvicorn closes them again
            server.close()
        from django.conf import settings

        from realtime.consumers import registry

        await registry.shutdown(settings.REALTIME_SHUTDOWN_GRACE)
        await super().shutdown(sockets)
        # uvicorn re-raises SIGTERM once it is done, so atexit handlers never run: the
        # process's live gauges (connections ...) leave the shared metric files here.
        from monitoring.metrics import process_exiting

        process_exiting()


def config(host: str, port: int, *, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's settings for WedSync (docs/adr/0003-asgi-server.md).

    permessage-deflate is off: it costs ~35 KB per connection and gains nothing on
    ~100-byte frames. Django has no lifespan handler, hence ``lifespan="off"``.
    """
    from django.conf import settings

    return uvicorn.Config(
        "wedsync.asgi:application",
        host=host,
        port=port,
        lifespan="off",
        ws_per_message_deflate=False,
        server_header=False,
        log_level=log_level,
        # After the drain, what is left (HTTP requests) gets this long as well.
        timeout_graceful_shutdown=int(settings.REALTIME_SHUTDOWN_GRACE) or 1,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wedsync.settings")
    django.setup()
    GracefulServer(config(args.host, args.port, log_level=args.log_level)).run()


if __name__ == "__main__":
    main()
