"""Print a new VAPID key pair for Web Push, as the two settings (ADR 0032)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from push.conf import generate_keys


class Command(BaseCommand):
    help = (
        "Print a new VAPID key pair (P-256, base64url) as WEB_PUSH_VAPID_PRIVATE_KEY and "
        "WEB_PUSH_VAPID_PUBLIC_KEY lines; the private key is a secret. A new pair makes "
        "every browser subscribe again."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        private, public = generate_keys()
        self.stdout.write(
            f"WEB_PUSH_VAPID_PRIVATE_KEY={private}\nWEB_PUSH_VAPID_PUBLIC_KEY={public}"
        )
