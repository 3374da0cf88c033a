"""One HTTP POST to a push service, with the stdlib (as ``webhooks.transport``): https
only, a timeout, no redirect followed, the response read up to a bound, and the address
checked (SSRF: a member registers the URL) before connecting, to the checked address."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

# Bytes of a push service's answer read at most: only the status matters.
RESPONSE_READ_LIMIT = 512


class UrlRefused(ValueError):
    """The URL may not be called: not https with a host, or a private address."""


@dataclass(frozen=True)
class Response:
    status: int
    body: str


def url_check(url: str) -> None:
    """Raise ``UrlRefused`` for a URL that is not https with a host and no credentials."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UrlRefused("must be an https:// URL with a host")
    if parts.username or parts.password:
        raise UrlRefused("no credentials in the URL")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        raise UrlRefused("bad port") from exc


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_global and not ip.is_multicast


def _resolve(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from exc
    addresses = [info[4][0] for info in infos]
    if not settings.WEB_PUSH_ALLOW_PRIVATE and not all(_public(a) for a in addresses):
        raise UrlRefused(f"{host} resolves to a private address (WEB_PUSH_ALLOW_PRIVATE)")
    return addresses[0]


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Response:
    """POST ``body`` to a push service. Raises ``UrlRefused``, or ``OSError`` (and
    ``http.client.HTTPException``) when no answer came."""
    url_check(url)
    parts = urlsplit(url)
    port = parts.port or 443
    address = _resolve(parts.hostname or "", port)
    connection = _PinnedHTTPS(parts.hostname or "", port, address, timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read(RESPONSE_READ_LIMIT).decode("utf-8", "replace")
        return Response(status=response.status, body=text)
    finally:
        connection.close()
