"""The benchmark's data, through ``seed_demo``'s code, and reads of the topics' seqs.

The only part of the package that uses the ORM; the coordinator calls it before the
event loop starts (seeding) and from a thread while it runs (``final_seqs``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import close_old_connections, connection, transaction

from realtime.models import Event, IdempotencyKey, TopicCursor
from realtime.tokens import token_issuer
from weddings.demo import seed_demo
from weddings.models import Booking, Supplier, SupplierMembership, Wedding

# Tokens are checked at the handshake only; reconnects of a long run need them valid.
TOKEN_TTL_S = 6 * 3600


@dataclass(frozen=True)
class WeddingLogins:
    """One seeded wedding: its topic and the tokens of its supplier users (planner first),
    with each token's supplier and user ids in the same order."""

    id: int
    topic: str
    tokens: list[str]
    supplier_ids: tuple[int, ...] = ()
    user_ids: tuple[int, ...] = ()


def seed_weddings(
    weddings: int,
    per_wedding: int,
    progress: Callable[[int, int], None] | None = None,
    *,
    with_staff: bool = True,
) -> list[WeddingLogins]:
    """Create ``weddings`` weddings with ``per_wedding`` suppliers (one user each) in the
    current database, committed, so that the server sees them."""
    demo = seed_demo(
        weddings=weddings, vendors_per_wedding=per_wedding, progress=progress,
        issue_token=token_issuer(TOKEN_TTL_S), with_staff=with_staff,
    )  # fmt: skip
    return [
        WeddingLogins(
            id=w["id"],
            topic=w["topic"],
            tokens=[s["users"][0]["token"] for s in w["suppliers"]],
            supplier_ids=tuple(s["id"] for s in w["suppliers"]),
            user_ids=tuple(s["users"][0]["user_id"] for s in w["suppliers"]),
        )
        for w in demo["weddings"]
    ]


def remove_seeded(wedding_ids: list[int]) -> int:
    """Delete what ``seed_weddings`` created for these weddings: their event log, their
    suppliers and those suppliers' users, their couples, and the weddings. Returns the
    number of weddings removed. Only for weddings this benchmark seeded."""
    topics = [f"wedding:{pk}" for pk in wedding_ids]
    with transaction.atomic():
        weddings = Wedding.objects.filter(pk__in=wedding_ids)
        supplier_ids = set(
            Booking.objects.filter(wedding__in=weddings).values_list("supplier_id", flat=True)
        )
        user_ids = set(
            SupplierMembership.objects.filter(supplier_id__in=supplier_ids).values_list(
                "user_id", flat=True
            )
        ) | set(Wedding.couple.through.objects.filter(wedding__in=weddings).values_list(
            "user_id", flat=True
        ))  # fmt: skip
        Event.objects.filter(topic__in=topics).delete()
        TopicCursor.objects.filter(topic__in=topics).delete()
        IdempotencyKey.objects.filter(topic__in=topics).delete()
        removed = weddings.count()
        weddings.delete()
        Supplier.objects.filter(pk__in=supplier_ids).delete()
        get_user_model()._default_manager.filter(pk__in=user_ids, is_staff=False).delete()
    return removed


def final_seqs(topics: list[str]) -> dict[str, int]:
    """Each topic's current seq (0 without events), from the event log's cursors.

    Called from a worker thread of the coordinator's event loop: closes its connection.
    """
    try:
        rows = dict(TopicCursor.objects.filter(topic__in=topics).values_list("topic", "last_seq"))
        return {topic: rows.get(topic, 0) for topic in topics}
    finally:
        close_old_connections()
        connection.close()


def database_url() -> str:
    """The URL of the database this process uses, to hand to the server it starts."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = db.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{db['NAME']}"


def database_kind() -> str:
    return connection.vendor
