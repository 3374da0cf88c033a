"""Audited on/off switches: wedding-day mode (scaling) and read-only mode (realtime).

A switch's state is the latest row of its change log (a ``core.models.SwitchChange``
subclass), off while there is none, cached under the switch's name because hot paths read
it (every publish, every connect). Apps declare their switches and register them in their
``ready()``; an app below the owner reads a switch by name (``state("wedding_day_mode")``)
without importing the app that owns it, and a switch nobody registered reads as off.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from core.cache import get_cache
from core.db import in_db_thread
from core.models import SWITCH_REASON_MAX_LENGTH, SwitchChange
from core.wire import wire_time

OFF: dict[str, Any] = {"enabled": False, "reason": "", "changed_by": None, "changed_at": None}


def switch_state(change: SwitchChange | None) -> dict[str, Any]:
    """A switch's state from its latest change row (None: off): ``enabled``, ``reason``,
    ``changed_by`` (``{"id", "username"}`` or None) and ``changed_at`` (wire time)."""
    if change is None:
        return dict(OFF)
    user = change.changed_by
    return {
        "enabled": change.enabled,
        "reason": change.reason,
        "changed_by": None if user is None else {"id": user.pk, "username": user.get_username()},
        "changed_at": wire_time(change.changed_at),
    }


def switch_reason_clean(
    enabled: Any, reason: Any, max_length: int = SWITCH_REASON_MAX_LENGTH
) -> str:
    """Validate a switch change: ``enabled`` a bool, ``reason`` 1 to ``max_length``
    characters, not blank. Returns the stripped reason; raises ``ValidationError`` naming
    the field."""
    if not isinstance(enabled, bool):
        raise ValidationError({"enabled": "must be true or false"})
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError({"reason": "a reason is required"})
    reason = reason.strip()
    if len(reason) > max_length:
        raise ValidationError({"reason": f"at most {max_length} characters"})
    return reason


class Switch:
    """One audited switch: ``name`` is its cache key and how other apps ask for it."""

    def __init__(self, name: str, model: type[SwitchChange]) -> None:
        self.name = name
        self.model = model

    def load(self) -> dict[str, Any]:
        """The state from the database (the latest change, or off)."""
        latest = self.model.objects.select_related("changed_by").order_by("-changed_at", "-id")
        return switch_state(latest.first())

    def state(self) -> dict[str, Any]:
        """``{"enabled", "reason", "changed_by", "changed_at"}`` through the cache."""
        return get_cache().get_or_load(self.name, self.load)

    async def astate(self) -> dict[str, Any]:
        """``state()`` on the event loop: a cached value costs no thread; a miss loads in a
        database thread (``DatabaseError`` while the database is unreachable)."""
        return await get_cache().aget_or_load(self.name, in_db_thread(self.load))

    def invalidate(self) -> None:
        """Drop the cached state now and once more after the current commit."""
        cache = get_cache()
        cache.delete(self.name)
        transaction.on_commit(lambda: cache.delete(self.name))

    def set(self, *, enabled: Any, reason: Any, user: Any) -> SwitchChange:
        """Record a change (``user`` None for an automated one) and drop the cached state.
        Raises ``ValidationError`` naming the field; nothing is stored then."""
        reason = switch_reason_clean(enabled, reason)
        changed_by = user if user is not None and getattr(user, "pk", None) else None
        with transaction.atomic():
            change = self.model.objects.create(
                enabled=enabled, reason=reason, changed_by=changed_by
            )
            self.invalidate()
        return change


_registry: dict[str, Switch] = {}


def register(switch: Switch) -> Switch:
    """Make ``switch`` readable by name (its owner's ``AppConfig.ready``)."""
    _registry[switch.name] = switch
    return switch


def state(name: str) -> dict[str, Any]:
    """The named switch's state; off when no app registered it."""
    switch = _registry.get(name)
    return switch.state() if switch is not None else dict(OFF)


async def astate(name: str) -> dict[str, Any]:
    """``state()`` on the event loop."""
    switch = _registry.get(name)
    return await switch.astate() if switch is not None else dict(OFF)
