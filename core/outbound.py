"""One outbound HTTP POST to a URL someone else chose (a webhook endpoint staff register,
a push service a member's browser names), with the stdlib: a timeout, no redirect
followed, the response read up to a bound, and the address checked (SSRF) before
connecting.

The host is resolved once, every address is checked, and the connection goes to the
checked address (TLS still verifies the certificate against the host name), so a DNS
answer that changes between the check and the connect cannot point it elsewhere. Used
by ``webhooks.transport`` and ``push.transport``, which say which schemes they allow and
which setting lets private addresses through.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit


class UrlRefused(ValueError):
    """The URL may not be called: a scheme not allowed, no host, credentials in it, a bad
    port, or a private address not allowed."""


@dataclass(frozen=True)
class Response:
    status: int
    body: str


def url_check(url: str, *, schemes: Collection[str]) -> SplitResult:
    """The URL's parts; ``UrlRefused`` unless its scheme is one of ``schemes``, it has a
    host, no credentials and a valid port."""
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        allowed = " and ".join(f"{s}://" for s in sorted(schemes))
        raise UrlRefused(f"only {allowed} URLs with a host")
    if parts.username or parts.password:
        raise UrlRefused("no credentials in the URL")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        raise UrlRefused("bad port") from exc
    return parts


def public(address: str) -> bool:
    """Whether ``address`` is a global unicast address (not private, loopback, link-local,
    reserved or multicast)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int, *, allow_private: bool, setting: str) -> str:
    """The address to connect to; ``UrlRefused`` when any of the host's addresses is not
    public and ``allow_private`` (the deployment's ``setting``) is off."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from exc
    addresses = [info[4][0] for info in infos]
    if not allow_private and not all(public(a) for a in addresses):
        raise UrlRefused(f"{host} resolves to a private address ({setting})")
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


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    schemes: Collection[str],
    allow_private: bool,
    setting: str,
    read_limit: int,
) -> Response:
    """POST ``body`` to ``url``, reading at most ``read_limit`` bytes of the answer.
    Raises ``UrlRefused``, or ``OSError`` (and ``http.client.HTTPException``) when no
    response came; a 3xx is a response like any other (not followed)."""
    parts = url_check(url, schemes=schemes)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    address = resolve(host, port, allow_private=allow_private, setting=setting)
    connection = (_PinnedHTTPS if https else _PinnedHTTP)(host, port, address, timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read(read_limit).decode("utf-8", "replace")
        return Response(status=response.status, body=text)
    finally:
        connection.close()
