"""One HTTP POST to a push service: ``core.outbound`` (a timeout, no redirect followed,
the response read up to a bound, the address checked before connecting, to the checked
address: a member's browser names the URL) with https:// only and
``WEB_PUSH_ALLOW_PRIVATE``."""

from __future__ import annotations

from django.conf import settings

from core import outbound
from core.outbound import Response, UrlRefused

__all__ = ["RESPONSE_READ_LIMIT", "Response", "UrlRefused", "post", "url_check"]

# Bytes of a push service's answer read at most: only the status matters.
RESPONSE_READ_LIMIT = 512
SCHEMES = frozenset({"https"})


def url_check(url: str) -> None:
    """Raise ``UrlRefused`` for a URL that is not https with a host and no credentials."""
    outbound.url_check(url, schemes=SCHEMES)


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Response:
    """POST ``body`` to a push service. Raises ``UrlRefused``, or ``OSError`` (and
    ``http.client.HTTPException``) when no answer came."""
    return outbound.post(
        url,
        body,
        headers,
        timeout=timeout,
        schemes=SCHEMES,
        allow_private=settings.WEB_PUSH_ALLOW_PRIVATE,
        setting="WEB_PUSH_ALLOW_PRIVATE",
        read_limit=RESPONSE_READ_LIMIT,
    )
