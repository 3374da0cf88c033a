"""The production ASGI server: uvicorn serving ``wedsync.asgi:application``, with a
graceful shutdown that drains WebSocket connections (docs/operations.md).

``python -m wedsync.serve --host 0.0.0.0 --port 8000``. On SIGTERM (or Ctrl-C) the
process stops accepting connections, refuses new publishes, lets the frames in flight
finish (up to ``REALTIME_SHUTDOWN_GRACE`` seconds; an in-flight publish is stored and
acknowledged), then closes every WebSocket with 1012 after what is queued for it, so
each client reconnects to another process with ``since`` and misses nothing. Plain
uvicorn would close them at once, dropping replies already computed.

``--workers N`` (default ``SERVER_WORKERS``, 1) above 1 runs N such processes on the one
port (docs/adr/0011-workers-on-one-port.md): this process becomes their supervisor, and
each worker binds its own socket with SO_REUSEPORT, so that Linux spreads new
connections evenly across them. A worker that dies is started again (with a log line);
SIGTERM or SIGINT goes on to every worker as SIGTERM, each drains as above, and the
supervisor exits once all of them have.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from wedsync.server.asgi_server import die_with_parent_hook, exit_text

logger = logging.getLogger("wedsync.serve")

# A worker that dies within this many seconds of its start is started again after a
# growing pause (1, 2, 4 ... BACKOFF_MAX_S), so one that crashes at once does not spin a
# core; one that ran longer is replaced at once.
STABLE_S = 10.0
BACKOFF_MAX_S = 30.0
# Between two looks at the workers and at the signals received.
POLL_S = 0.1


class GracefulServer(uvicorn.Server):
    """uvicorn's server with the process warmed up before it listens
    (``wedsync.server.warmup``) and the realtime connections drained before its own
    shutdown."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Here, not at the top: the supervisor imports this module and never loads Django.
        from django.conf import settings

        if settings.SERVER_WARMUP:
            from wedsync.server.gctune import tune_after_startup
            from wedsync.server.warmup import warm_up

            await warm_up()
            tune_after_startup()  # freeze what the warm-up built with the rest of the start
        await super().startup(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # stop accepting first; uvicorn closes them again
            server.close()
        # Imported here, not at the top: this module runs as the supervisor too, which
        # never loads Django, and the worker loads it only after its settings are set.
        from django.conf import settings

        from realtime.node import process as registry

        await registry.shutdown(settings.REALTIME_SHUTDOWN_GRACE)
        await super().shutdown(sockets)
        # uvicorn re-raises SIGTERM once it is done, so atexit handlers never run: the
        # process's live gauges (connections ...) leave the shared metric files here.
        from core.metrics import process_exiting

        process_exiting()


_SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 19\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Service Unavailable"
)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with two limits it lacks (docs/operations.md,
    transport limits):

    * a header timeout: uvicorn arms no timer until a response has been sent, so a
      client that connects and sends nothing, or half a request line, holds its socket
      (and a slot of ``limit_concurrency``) forever. Here a client has ``header_timeout``
      seconds from its connection, or from the first byte of a later request on a kept
      connection, to complete the request's headers; then the socket is closed. Bodies,
      responses and upgraded WebSockets (which have their own stale close, 4000) are not
      timed by it.
    * the concurrency cap for WebSocket handshakes: uvicorn answers 503 to an HTTP
      request once ``limit_concurrency`` connections are open, but lets an upgrade
      through whatever the count. The same test (``Config.limit_concurrency`` against
      the open connections and tasks) now refuses a handshake with 503 too.
    """

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        if self._over_limit():
            self.logger.warning("Exceeded concurrency limit: WebSocket handshake refused.")
            self.transport.write(_SERVICE_UNAVAILABLE)
            self.transport.close()
            return
        super().handle_websocket_upgrade()

    def _over_limit(self) -> bool:
        limit = self.limit_concurrency
        return limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and self.header_timeout > 0:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def log_config() -> dict:
    """settings.LOGGING, with uvicorn's loggers writing through its handlers: its access
    log (``GET /ws/realtime/?token=...``) and its error log (where WebSocket handshakes
    are logged, URL and all) get the same format (``LOG_FORMAT``: JSON with the request
    id, or plain), the same context (``core.logging.LogContext``) and ``RedactTokens``,
    so they never write a token. Their level stays ``--log-level`` (``info`` for the
    access log)."""
    # Here, not at the top: the supervisor imports this module and never loads Django.
    from django.conf import settings

    log = copy.deepcopy(settings.LOGGING)
    loggers = log.setdefault("loggers", {})
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        loggers[name] = {"handlers": [], "propagate": True}
    return log


class LeanConfig(uvicorn.Config):
    """uvicorn's settings, with its proxy-headers middleware (``FORWARDED_ALLOW_IPS``)
    run as ``wedsync.server.tail.TailProxyHeaders``: the same rules, without a
    coroutine frame of its own held for each WebSocket's life (ADR 0035)."""

    def load(self) -> None:
        # Here, not at the top: tail.py imports Channels, and the supervisor imports this
        # module without loading Django.
        from wedsync.server.tail import TailProxyHeaders

        super().load()
        app = self.loaded_app
        if type(app) is ProxyHeadersMiddleware:
            self.loaded_app = TailProxyHeaders(app)


def config(host: str, port: int, *, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's settings for WedSync (docs/adr/0003-asgi-server.md).

    permessage-deflate follows ``REALTIME_WS_COMPRESSION`` (on by default, for the
    clients that offer it: browsers do; docs/adr/0034-bytes-on-the-wire.md): ~85 % fewer
    bytes per event and a 50-event replay in two TCP segments instead of twelve, for
    ~43 KiB per compressing connection and ~5 µs of CPU per delivery. Django has no
    lifespan handler, hence ``lifespan="off"``.

    A WebSocket message over the protocol's frame limit (``MAX_FRAME_BYTES``) closes the
    connection with 1009 as soon as its header is read: uvicorn's default would first
    buffer up to 16 MiB of it for the application to refuse (PROTOCOL §1, §8).
    """
    # Here, not at the top: the supervisor imports this module and never loads Django.
    from django.conf import settings

    from realtime.protocol import MAX_FRAME_BYTES
    from wedsync.server.websocket import LeanWebSocketProtocol

    http = type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout": float(settings.SERVER_HEADER_TIMEOUT)},
    )
    return LeanConfig(
        "wedsync.asgi:application",
        host=host,
        port=port,
        # Named rather than "auto", which picks the same three when they are installed
        # (uvicorn 0.54: uvloop, httptools, and websockets-sansio whenever `websockets` is
        # importable): a missing one is then an error at start, not a slower fallback.
        loop="uvloop",
        # Said, not detected: the application hands over coroutines from plain functions
        # (wedsync.server.tail), which a detection may not take for ASGI 3.
        interface="asgi3",
        # httptools, with a header timeout and the WebSocket concurrency cap.
        http=http,
        # websockets-sansio without its per-connection queue, event and handshake kept
        # for the connection's life (wedsync.server.websocket, ADR 0035).
        ws=LeanWebSocketProtocol,
        ws_max_size=MAX_FRAME_BYTES,
        limit_concurrency=settings.SERVER_LIMIT_CONCURRENCY or None,
        lifespan="off",
        ws_per_message_deflate=settings.REALTIME_WS_COMPRESSION,
        server_header=False,
        log_level=log_level,
        log_config=log_config(),
        # After the drain, what is left (HTTP requests) gets this long as well.
        timeout_graceful_shutdown=int(settings.REALTIME_SHUTDOWN_GRACE) or 1,
    )


# --- several workers on one port ---------------------------------------------------------


def check_reuse_port() -> None:
    """Exit with a clear message where the kernel cannot spread one port's connections
    over several sockets (SO_REUSEPORT balances on Linux only; BSD and macOS accept the
    option but hand every connection to one socket)."""
    reason = None
    if not sys.platform.startswith("linux"):
        reason = f"{sys.platform} does not balance connections over SO_REUSEPORT sockets"
    elif not hasattr(socket, "SO_REUSEPORT"):
        reason = "this Python has no socket.SO_REUSEPORT"
    else:
        with socket.socket() as probe:
            try:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            except OSError as exc:
                reason = f"SO_REUSEPORT refused: {exc}"
    if reason:
        raise SystemExit(
            f"wedsync.serve: --workers above 1 needs Linux's SO_REUSEPORT ({reason}). Run "
            "one `python -m wedsync.serve --workers 1` per port instead, behind nginx or "
            "HAProxy (docs/operations.md, several processes without SO_REUSEPORT)."
        )


def _address(host: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, address


def check_port_free(host: str, port: int) -> None:
    """Exit unless host:port can be bound: the workers' SO_REUSEPORT sockets would join
    any other SO_REUSEPORT listener of the same user there (a forgotten server) and share
    its connections with it, so the supervisor checks with a plain socket first."""
    family, address = _address(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise SystemExit(f"wedsync.serve: cannot bind {host}:{port}: {exc.strerror}") from None


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """One worker's socket, bound to host:port with SO_REUSEPORT. It starts listening
    only once the application is loaded (uvicorn's ``create_server``), so a worker that
    is still starting receives no connections."""
    family, address = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    """N worker processes (``argv``) on one port: a worker that dies unexpectedly is
    started again; the first SIGTERM or SIGINT is passed on to every worker as SIGTERM
    (each drains its connections), a later SIGINT as SIGINT (uvicorn's "force quit").
    ``run()`` returns once every worker has exited, with the process's exit code."""

    def __init__(self, argv: list[str], workers: int) -> None:
        self.argv = argv
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.started_at = [0.0] * workers
        self.restart_at = [0.0] * workers
        self.backoff = [0.0] * workers
        self.received: list[int] = []
        self.stopping = False
        self.exit_code = 0
        # Only safe while this process has a single thread, which the supervisor keeps.
        self._preexec = die_with_parent_hook()

    def run(self) -> int:
        handled = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            for slot in range(len(self.procs)):
                self._start(slot)
            logger.info(
                "serving with %d workers: pids %s",
                len(self.procs),
                " ".join(str(p.pid) for p in self.procs if p is not None),
            )
            while not (self.stopping and not self._alive()):
                self._handle_signals()
                self._check_workers()
                time.sleep(POLL_S)
        finally:
            if self._alive():  # an error in this loop: do not leave workers behind
                self._signal_all(signal.SIGTERM)
                for proc in self._alive():
                    proc.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.exit_code

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received.append(signum)  # acted on in the loop, outside the handler

    def _alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p is not None and p.poll() is None]

    def _signal_all(self, sig: int) -> None:
        for proc in self._alive():
            try:
                proc.send_signal(sig)
            except ProcessLookupError:  # exited since poll()
                pass

    def _start(self, slot: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, preexec_fn=self._preexec)
        self.procs[slot] = proc
        self.started_at[slot] = time.monotonic()
        return proc

    def _stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self._signal_all(signal.SIGTERM)

    def _handle_signals(self) -> None:
        while self.received:
            sig = self.received.pop(0)
            if not self.stopping:
                logger.warning(
                    "received %s: stopping %d workers (each drains its connections)",
                    signal.Signals(sig).name,
                    len(self._alive()),
                )
                self._stop()
            else:  # again: SIGINT forces the workers out, SIGTERM changes nothing
                self._signal_all(sig)

    def _check_workers(self) -> None:
        now = time.monotonic()
        for slot, proc in enumerate(self.procs):
            if proc is None:
                if not self.stopping and now >= self.restart_at[slot]:
                    pid = self._start(slot).pid
                    logger.warning("worker %d started again: pid %d", slot + 1, pid)
                continue
            code = proc.poll()
            if code is None or self.stopping:
                continue
            self.procs[slot] = None
            if code == STARTUP_FAILURE:
                # It could not bind or load the application: every restart would fail
                # the same way (uvicorn's own supervisor stops here too).
                logger.error(
                    "worker %d (pid %d) could not start; stopping the others", slot + 1, proc.pid
                )
                self.exit_code = STARTUP_FAILURE
                self._stop()
                continue
            lived = now - self.started_at[slot]
            pause = 0.0
            if lived < STABLE_S:  # crashing at start: wait 1, 2, 4 ... s between tries
                pause = min(max(1.0, 2 * self.backoff[slot]), BACKOFF_MAX_S)
            self.backoff[slot] = pause
            self.restart_at[slot] = now + pause
            logger.warning(
                "worker %d (pid %d) %s after %.1f s; starting a new one%s",
                slot + 1, proc.pid, exit_text(code), lived, f" in {pause:g} s" if pause else "",
            )  # fmt: skip


# --- the command -------------------------------------------------------------------------


def _configure_supervisor_logging(level: str) -> None:
    """The supervisor does not set Django up: its few lines go to stderr in the format of
    settings.LOGGING."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if level.lower() == "trace" else level.upper())
    logger.propagate = False


def serve_one(host: str, port: int, log_level: str, reuse_port: bool) -> None:
    """One server process in this process: on its own socket, or with ``reuse_port`` on
    an SO_REUSEPORT socket shared with the other workers of a supervisor."""
    import django

    django.setup()
    sockets = None
    if reuse_port:
        check_reuse_port()
        try:
            sockets = [reuse_port_socket(host, port)]
        except OSError as exc:
            logger.error("cannot bind %s:%d: %s", host, port, exc.strerror)
            sys.exit(STARTUP_FAILURE)
    server = GracefulServer(config(host, port, log_level=log_level))
    server.run(sockets=sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes on this port (default: SERVER_WORKERS, 1); above 1 they "
        "share it through SO_REUSEPORT under this process as their supervisor (Linux)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT, so that other processes may serve the same port "
        "(what each worker of --workers does)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wedsync.settings")
    from django.conf import settings

    workers = settings.SERVER_WORKERS if args.workers is None else args.workers
    if workers < 1:
        parser.error(f"--workers must be at least 1, not {workers}")
    if workers == 1:
        serve_one(args.host, args.port, args.log_level, args.reuse_port)
        return
    if args.port == 0:
        parser.error("--workers above 1 needs a fixed --port (each worker binds it)")
    _configure_supervisor_logging(args.log_level)
    check_reuse_port()
    check_port_free(args.host, args.port)
    if settings.EMBEDDED:
        logger.warning(
            "the embedded default (no REDIS_URL) keeps its channel layer, presence and "
            "connection limits in each process: with %d workers an event published on one "
            "reaches the clients of another only at their next sweep "
            "(REALTIME_SWEEP_INTERVAL). Set REDIS_URL to run several.",
            workers,
        )
    worker_argv = [
        sys.executable, "-m", "wedsync.serve", "--workers", "1", "--reuse-port",
        "--host", args.host, "--port", str(args.port), "--log-level", args.log_level,
    ]  # fmt: skip
    sys.exit(Supervisor(worker_argv, workers).run())


if __name__ == "__main__":
    main()
