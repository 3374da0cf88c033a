"""Django's model backend with the session user read through the two-tier cache.

Every WebSocket connect and every request resolves the session's user. With
``ModelBackend`` that is a query each time, which a reconnect storm multiplies by the
number of clients; through the cache it is one query per user per cache lifetime, and a
signed-in user is still recognised while the database is briefly unreachable. Password
checks (sign-in) still read the database.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend

from weddings.caching import user_cached


class CachedModelBackend(ModelBackend):
    """``ModelBackend`` whose ``get_user`` reads ``weddings.caching.user_cached``."""

    def get_user(self, user_id: Any) -> Any:
        user = user_cached(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None
