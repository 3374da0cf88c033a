"""One HTTP POST to an endpoint, with the stdlib: a timeout, no redirect followed, the
response read up to a bound, and the address checked (SSRF) before connecting.

The host is resolved once, every address is checked, and the connection goes to the
checked address (TLS still verifies the certificate against the host name), so a DNS
answer that changes between the check and the connect cannot point it elsewhere.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

# Bytes of the response read at most: only the status matters, the start of the body
# goes into the delivery's last error.
RESPONSE_READ_LIMIT = 1024
USER_AGENT = "WedSync-Webhooks/1"


class UrlRefused(ValueError):
    """The URL may not be called: not http(s), or a private address not allowed."""


@dataclass(frozen=True)
class Response:
    status: int
    body: str


def url_check(url: str) -> None:
    """Raise ``UrlRefused`` for a URL that is not http(s) with a host."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise UrlRefused("only http:// and https:// URLs with a host")
    if parts.username or parts.password:
        raise UrlRefused("no credentials in the URL")


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_global and not ip.is_multicast


def _resolve(host: str, port: int) -> str:
    """The address to connect to; ``UrlRefused`` when any is private and not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from exc
    addresses = [info[4][0] for info in infos]
    if not settings.WEBHOOKS_ALLOW_PRIVATE and not all(_public(a) for a in addresses):
        raise UrlRefused(f"{host} resolves to a private address (WEBHOOKS_ALLOW_PRIVATE)")
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: str, headers: dict[str, str], *, timeout: float) -> Response:
    """POST ``body`` (JSON) to ``url``. Raises ``UrlRefused``, or ``OSError`` (and
    ``http.client.HTTPException``) when no response came; a 3xx is a response like any
    other (not followed)."""
    url_check(url)
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    address = _resolve(parts.hostname or "", port)
    connection = (_PinnedHTTPS if https else _PinnedHTTP)(
        parts.hostname or "", port, address, timeout
    )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request(
            "POST",
            path,
            body=body.encode(),
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        )
        response = connection.getresponse()
        text = response.read(RESPONSE_READ_LIMIT).decode("utf-8", "replace")
        return Response(status=response.status, body=text)
    finally:
        connection.close()
