"""Tell live connections when access changes, so a subscription never outlives a right.

A booking deactivated or deleted, a membership removed: every connection on the
wedding's topic re-checks its user (``rt.recheck``, to the topic's group); so does a
user taken off a wedding's couple (``Wedding.couple``, either side of the relation). A
user deactivated or deleted, or whose password changed: every connection of that user
closes with 4001 (``rt.user.revoked``, to the one group of user notices that every
server process's hub joins). A user's staff status removed: every connection of that
user re-checks all its topics (``rt.user.recheck``, to the same group). Sent after
commit. What a signal cannot see (``QuerySet.update``) the periodic re-check of every
connection catches (``REALTIME_ACCESS_RECHECK``, ``realtime.consumer_registry``). A
booking saved or deleted also drops its wedding's cached booked suppliers (the presence
cards, ``access.booked_supplier_ids``).

The cached access (``weddings.caching``, connected by ``WeddingsConfig.ready``, which
runs before realtime's: ``weddings`` comes first in INSTALLED_APPS) and snapshots
(``realtime.snapshots``, imported below) are invalidated by their own receivers, connected
BEFORE these: Django calls receivers, and runs on-commit callbacks, in the order they were
registered, so the cache is dropped before any ``rt.recheck`` is sent. (The re-check
itself reads the database, ``access.still_allowed``, so it is exact either way.)
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver

from core.cache import get_cache
from weddings.models import Booking, SupplierMembership, Wedding

from . import snapshots  # noqa: F401  (connects its receivers)
from .access import booked_suppliers_key
from .layer import group_send_bounded
from .messages import (
    ACCESS_GROUP,
    group_name,
    recheck_message,
    user_recheck_message,
    user_revoked_message,
)
from .models import TokenVersion
from .tokens import token_version_invalidate

logger = logging.getLogger(__name__)


def _send_after_commit(group: str, message: dict[str, Any]) -> None:
    def send() -> None:
        try:
            async_to_sync(group_send_bounded)(group, message)
        except Exception:  # connections re-check on their next publish anyway
            logger.warning("could not notify %s", group, exc_info=True)

    transaction.on_commit(send)


def _recheck_weddings(wedding_ids: list[int]) -> None:
    for wedding_id in wedding_ids:
        topic = f"wedding:{wedding_id}"
        _send_after_commit(group_name(topic), recheck_message(topic))


@receiver(post_save, sender=Booking, dispatch_uid="booked_suppliers_saved")
@receiver(post_delete, sender=Booking, dispatch_uid="booked_suppliers_deleted")
def booked_suppliers_changed(sender: type, instance: Booking, **kwargs: Any) -> None:
    """Drop the wedding's cached booked suppliers (presence cards), now and after commit."""
    key = booked_suppliers_key(instance.wedding_id)
    cache = get_cache()
    cache.delete(key)
    transaction.on_commit(lambda: cache.delete(key))


@receiver(post_save, sender=Booking)
def booking_saved(sender: type, instance: Booking, **kwargs: Any) -> None:
    if not instance.active:
        _recheck_weddings([instance.wedding_id])


@receiver(post_delete, sender=Booking)
def booking_deleted(sender: type, instance: Booking, **kwargs: Any) -> None:
    _recheck_weddings([instance.wedding_id])


@receiver(post_delete, sender=SupplierMembership)
def membership_deleted(sender: type, instance: SupplierMembership, **kwargs: Any) -> None:
    wedding_ids = list(
        Booking.objects.filter(supplier_id=instance.supplier_id).values_list(
            "wedding_id", flat=True
        )
    )
    _recheck_weddings(wedding_ids)
    topic = f"supplier:{instance.supplier_id}"
    _send_after_commit(group_name(topic), recheck_message(topic))


# What user_saved compares with: the row before the save, kept on the instance.
_BEFORE = "_realtime_before_save"
_WATCHED_FIELDS = frozenset({"password", "is_staff", "is_active"})


@receiver(pre_save, sender=get_user_model(), dispatch_uid="realtime_user_before_save")
def user_before_save(
    sender: type, instance: Any, raw: bool = False, update_fields: Any = None, **kwargs: Any
) -> None:
    """Remember the password hash and staff flag the row has before this save (one
    query; none for a new user or a save of other fields, such as ``last_login``)."""
    before = None
    if (
        not raw
        and instance.pk is not None
        and (update_fields is None or _WATCHED_FIELDS & set(update_fields))
    ):
        before = (
            sender._default_manager.filter(pk=instance.pk).values("password", "is_staff").first()
        )
    instance.__dict__[_BEFORE] = before


@receiver(post_save, sender=get_user_model(), dispatch_uid="realtime_user_saved")
def user_saved(sender: type, instance: Any, **kwargs: Any) -> None:
    before = instance.__dict__.pop(_BEFORE, None)
    if not instance.is_active or (before is not None and before["password"] != instance.password):
        _send_after_commit(ACCESS_GROUP, user_revoked_message(instance.pk))
    elif before is not None and before["is_staff"] and not instance.is_staff:
        _send_after_commit(ACCESS_GROUP, user_recheck_message(instance.pk))


@receiver(post_delete, sender=get_user_model(), dispatch_uid="realtime_user_deleted")
def user_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    _send_after_commit(ACCESS_GROUP, user_revoked_message(instance.pk))


@receiver(m2m_changed, sender=Wedding.couple.through, dispatch_uid="realtime_couple_changed")
def couple_changed(
    sender: type, instance: Any, action: str, reverse: bool, pk_set: set | None, **kwargs: Any
) -> None:
    """Someone taken off a wedding's couple: that wedding's connections re-check."""
    if action not in ("post_remove", "post_clear"):
        return
    if not reverse:  # wedding.couple.remove(user) / .clear(): the wedding is the instance
        _recheck_weddings([instance.pk])
    elif action == "post_remove":  # user.couple_weddings.remove(wedding, ...)
        _recheck_weddings(sorted(pk_set or ()))
    else:  # user.couple_weddings.clear(): which weddings is no longer known
        _send_after_commit(ACCESS_GROUP, user_recheck_message(instance.pk))


@receiver(post_save, sender=TokenVersion, dispatch_uid="realtime_token_version_saved")
@receiver(post_delete, sender=TokenVersion, dispatch_uid="realtime_token_version_deleted")
def token_version_changed(sender: type, instance: TokenVersion, **kwargs: Any) -> None:
    """A version changed other than by ``tokens_revoke_all`` (the admin, a fixture):
    drop the cached one. (A bulk ``update`` is what ``tokens_revoke_all`` does itself.)"""
    token_version_invalidate(instance.user_id)
