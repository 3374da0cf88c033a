"""The container image's HEALTHCHECK: ``GET /healthz`` on this container's server.

``python deploy/docker/healthcheck.py [PORT]`` exits 0 when the server answers 200, 1
otherwise. Standard library only and no Django: it runs every 30 s, so it must cost a
few milliseconds, not a Django start-up.

Django answers a request whose ``Host`` is not in ``ALLOWED_HOSTS`` with 400, so the
probe sends the first host that list accepts (``/healthz`` is exempt from the HTTPS
redirect: no ``X-Forwarded-Proto`` is needed).
"""

from __future__ import annotations

import http.client
import os
import sys

DEFAULT_PORT = 8000
TIMEOUT_S = 4.0


def probe_host(allowed_hosts: str) -> str:
    """A Host header that ``ALLOWED_HOSTS`` (comma-separated, as in the environment)
    accepts: its first concrete entry, a leading-dot domain without its dot; ``localhost``
    when the list is empty (DEBUG's default admits it) or only ``*``."""
    for entry in (part.strip() for part in allowed_hosts.split(",")):
        if entry and entry != "*":
            return entry.lstrip(".")
    return "localhost"


def healthy(port: int, host_header: str) -> bool:
    """True when ``GET /healthz`` on 127.0.0.1:``port`` answers 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/healthz", headers={"Host": host_header})
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def main(argv: list[str]) -> int:
    port = int(argv[1]) if len(argv) > 1 else DEFAULT_PORT
    return 0 if healthy(port, probe_host(os.environ.get("ALLOWED_HOSTS", ""))) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
