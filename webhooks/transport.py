"""One HTTP POST to a webhook endpoint: ``core.outbound`` (a timeout, no redirect
followed, the response read up to a bound, the address checked before connecting, to
the checked address) with http:// or https:// and ``WEBHOOKS_ALLOW_PRIVATE``."""

from __future__ import annotations

from django.conf import settings

from core import outbound
from core.outbound import Response, UrlRefused

__all__ = ["RESPONSE_READ_LIMIT", "USER_AGENT", "Response", "UrlRefused", "post", "url_check"]

# Bytes of the response read at most: only the status matters, the start of the body
# goes into the delivery's last error.
RESPONSE_READ_LIMIT = 1024
USER_AGENT = "WedSync-Webhooks/1"
SCHEMES = frozenset({"http", "https"})


def url_check(url: str) -> None:
    """Raise ``UrlRefused`` for a URL that is not http(s) with a host."""
    outbound.url_check(url, schemes=SCHEMES)


def post(url: str, body: str, headers: dict[str, str], *, timeout: float) -> Response:
    """POST ``body`` (JSON) to ``url``. Raises ``UrlRefused``, or ``OSError`` (and
    ``http.client.HTTPException``) when no response came; a 3xx is a response like any
    other (not followed)."""
    return outbound.post(
        url,
        body.encode(),
        {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        timeout=timeout,
        schemes=SCHEMES,
        allow_private=settings.WEBHOOKS_ALLOW_PRIVATE,
        setting="WEBHOOKS_ALLOW_PRIVATE",
        read_limit=RESPONSE_READ_LIMIT,
    )
