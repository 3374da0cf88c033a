"""The command line that serves ``wedsync.asgi:application`` (docs/adr/0003-asgi-server.md)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import signal
import sys
from collections.abc import Callable

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
    (docs/operations.md).
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
        if workers != 1:
            raise ValueError(
                "daphne runs one process per port: start one per port behind nginx or "
                "HAProxy (docs/operations.md), or use uvicorn for several workers on one port"
            )
        return [sys.executable, "-m", "daphne", "-b", host, "-p", str(port),
                "wedsync.asgi:application"]  # fmt: skip
    raise ValueError(f"unknown ASGI server {server!r}; choose one of {', '.join(SERVERS)}")


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the process starting it
    dies (even by SIGKILL), so that no server or worker is left behind as an orphan (it
    drains and exits); None where prctl is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

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


# ``token=<value>`` and ``ticket=<value>`` anywhere (``?token=``, ``&access_token=``,
# ``csrftoken=``, ``?ticket=`` alike; the value runs to the next separator of a URL,
# header or log line), and a ``Bearer`` credential (at least 8 characters, so that prose
# such as "a Bearer token" stays).
_TOKEN_VALUE = re.compile(r"((?i:token|ticket)=)[^\s&;,\"'<>#]+|(Bearer\s+)[A-Za-z0-9_\-.=~+/]{8,}")
REDACTED = "[redacted]"


def redact_tokens(text: str) -> str:
    """``text`` with the value of every ``token=`` and ``ticket=`` parameter and
    ``Bearer`` credential replaced by ``[redacted]``."""
    return _TOKEN_VALUE.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, text)


class RedactTokens(logging.Filter):
    """A logging filter that keeps realtime tokens and connect tickets (credentials) out
    of every log line: uvicorn's access log writes ``GET /ws/realtime/?token=...`` (or
    ``?ticket=...``) in full, and anything else may log a URL or a header. Installed on
    the handlers of settings.LOGGING and of uvicorn's log config (wedsync.serve), so it
    sees every record they write, whichever logger it came from. The record keeps its
    level and logger; only its text changes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave it to the handler to report
            return True
        redacted = redact_tokens(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
