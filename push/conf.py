"""The VAPID keys (RFC 8292) from settings: push is on only when all three settings are
set, and a system check says at start-up when they are set wrong."""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core import checks
from py_vapid import Vapid


def b64url(data: bytes) -> str:
    """base64url without padding, as the Push API and VAPID write keys."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """The bytes of base64url text, padded or not; ``ValueError`` when it is not."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc


def public_key_of(private_key: ec.EllipticCurvePrivateKey) -> str:
    """The public key as the page's ``applicationServerKey``: an uncompressed point."""
    point = private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(point)


def generate_keys() -> tuple[str, str]:
    """A new VAPID key pair: (private, public), base64url (``manage.py push_vapid_keys``)."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    raw = private_key.private_numbers().private_value.to_bytes(32, "big")
    return b64url(raw), public_key_of(private_key)


def enabled() -> bool:
    """Whether push is configured (the three WEB_PUSH_* settings)."""
    return bool(
        settings.WEB_PUSH_VAPID_PRIVATE_KEY
        and settings.WEB_PUSH_VAPID_PUBLIC_KEY
        and settings.WEB_PUSH_SUBJECT
    )


@lru_cache(maxsize=4)
def _vapid(private_key: str) -> Vapid:
    return Vapid.from_raw(private_key.encode())


def vapid() -> Vapid:
    """The signer of the configured private key (``ValueError`` when it is not one)."""
    try:
        return _vapid(settings.WEB_PUSH_VAPID_PRIVATE_KEY)
    except Exception as exc:  # py_vapid raises whatever cryptography raises
        raise ValueError("WEB_PUSH_VAPID_PRIVATE_KEY is not a base64url P-256 key") from exc


def check_keys(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """push.W001: push half configured (off); push.E001: keys that are not a pair, or a
    subject that is neither mailto: nor https:."""
    names = ("WEB_PUSH_VAPID_PRIVATE_KEY", "WEB_PUSH_VAPID_PUBLIC_KEY", "WEB_PUSH_SUBJECT")
    given = [name for name in names if getattr(settings, name)]
    if not given:
        return []
    if len(given) < len(names):
        missing = ", ".join(name for name in names if name not in given)
        return [checks.Warning(f"Web Push is off: {missing} not set", id="push.W001")]
    errors = []
    try:
        public = public_key_of(vapid().private_key)
    except ValueError as exc:
        errors.append(checks.Error(str(exc), id="push.E001"))
    else:
        if public != settings.WEB_PUSH_VAPID_PUBLIC_KEY.rstrip("="):
            errors.append(
                checks.Error(
                    "WEB_PUSH_VAPID_PUBLIC_KEY is not the private key's public key",
                    hint="print a pair with `manage.py push_vapid_keys`",
                    id="push.E001",
                )
            )
    if not settings.WEB_PUSH_SUBJECT.startswith(("mailto:", "https://")):
        errors.append(checks.Error("WEB_PUSH_SUBJECT must be mailto: or https:", id="push.E001"))
    return errors
