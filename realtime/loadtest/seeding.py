"""The benchmark's data, through ``seed_demo``'s code, and reads of the topics' seqs.

The only part of the package that uses the ORM; the coordinator calls it before the
event loop starts (seeding) and from a thread while it runs (``final_seqs``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db import close_old_connections, connection

from realtime.models import TopicCursor
from wedsync.demo import seed_demo

# Tokens are checked at the handshake only; reconnects of a long run need them valid.
TOKEN_TTL_S = 6 * 3600


@dataclass(frozen=True)
class WeddingLogins:
    """One seeded wedding: its topic and the tokens of its supplier users (planner first)."""

    id: int
    topic: str
    tokens: list[str]


def seed_weddings(
    weddings: int, per_wedding: int, progress: Callable[[int, int], None] | None = None
) -> list[WeddingLogins]:
    """Create ``weddings`` weddings with ``per_wedding`` suppliers (one user each) in the
    current database, committed, so that the server sees them."""
    demo = seed_demo(
        weddings=weddings, vendors_per_wedding=per_wedding, progress=progress,
        token_ttl=TOKEN_TTL_S,
    )  # fmt: skip
    return [
        WeddingLogins(
            id=w["id"],
            topic=w["topic"],
            tokens=[s["users"][0]["token"] for s in w["suppliers"]],
        )
        for w in demo["weddings"]
    ]


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
