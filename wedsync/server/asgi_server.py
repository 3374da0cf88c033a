"""The command line that serves ``wedsync.asgi:application`` (docs/adr/0003-asgi-server.md)."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import signal
import sys
from collections.abc import Callable

# The log lines' credential redaction lives with the rest of the logging set-up; its
# names stay importable from here, where it began.
from core.logging import REDACTED, RedactTokens, redact_tokens  # noqa: F401

SERVERS = ("uvicorn", "daphne")


def asgi_server_command(
    host: str, port: int, server: str = "uvicorn", workers: int = 1, log_level: str = "warning"
) -> list[str]:
    """The argv of the ASGI server bound to host:port, with ``workers`` processes, logging
    at ``log_level`` (uvicorn's; ``info`` adds its access log).

    uvicorn is the default: its WebSocket send waits while the client's socket buffer is
    full, so a slow client backs up into its own bounded outbox (closed with 1013)
    instead of the server's memory. It runs through ``wedsync.serve``, which drains the
    connections on SIGTERM (close 1012 after the frames in flight), and with ``workers``
    above 1 supervises that many processes sharing the port (SO_REUSEPORT, Linux).
    daphne serves one process per port: several go behind nginx or HAProxy
    (docs/operations.md); it is a development convenience, installed by the development
    lock only (ValueError where it is missing).
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if server == "uvicorn":
        return [
            sys.executable, "-m", "wedsync.serve",
            "--host", host, "--port", str(port),
            "--workers", str(workers),
            "--log-level", log_level,
        ]  # fmt: skip
    if server == "daphne":
        if importlib.util.find_spec("daphne") is None:
            raise ValueError(
                "daphne is not installed: it comes with the development install "
                "(requirements-dev.txt) only; production serves with uvicorn"
            )
        if workers != 1:
            raise ValueError(
                "daphne runs one process per port: start one per port behind nginx or "
                "HAProxy (docs/operations.md), or use uvicorn for several workers on one port"
            )
        return [sys.executable, "-m", "daphne", "-b", host, "-p", str(port),
                "wedsync.asgi:application"]  # fmt: skip
    raise ValueError(f"unknown ASGI server {server!r}; choose one of {', '.join(SERVERS)}")


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent_hook(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` (SIGTERM: the child drains and exits)
    to the child when the process starting it dies (even by SIGKILL), so that no server or
    worker is left behind as an orphan; None where prctl is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return hook


def exit_text(returncode: int) -> str:
    """How a child process ended, for a log line: ``was killed by SIGKILL``, ``exited with
    code 3``."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"
