"""Connect tickets (PROTOCOL §2, v1.1): short-lived, single-use credentials for one
WebSocket handshake.

Why: a realtime token lives up to hours (days, when asked for), and ``?token=`` puts it
in a URL, where proxies, browsers and crash reports may keep it. A ticket bought just
before connecting (``POST /api/realtime/ticket``) and sent as ``?ticket=`` is worth
nothing once a handshake has used it, nor ``REALTIME_TICKET_TTL`` seconds (30) after it
was bought.

A ticket is 32 random bytes (``secrets.token_urlsafe``), opaque: what it stands for, a
``Grant`` (the user, the token version and password fingerprint it was bought with, as
a token carries them, and the expiry), is kept on the server under the SHA-256 of the
ticket, so neither a Redis dump nor a database row holds a usable ticket. Two stores,
chosen by ``REDIS_URL`` as the rest of the stack is:

* ``RedisTicketStore``: ``SET … EX`` on issue, ``GETDEL`` on use, on the shared asyncio
  client (the event loop never waits on a socket);
* ``DatabaseTicketStore`` (the embedded default): a ``ConnectTicket`` row, taken with one
  ``DELETE … RETURNING`` statement in a realtime database thread.

Either way, using a ticket reads and removes it in one atomic step, so of any number of
handshakes presenting it, in any number of server processes, at most one gets the grant.
The grant is then checked exactly as a token's claims, by the tokens' own helpers
(``tokens._fingerprint``, ``tokens._token_user``) rather than a copy that could drift:
the user must exist and be active, and the fingerprint must match the current password
hash and token version, so a password change, a deactivation or "sign out everywhere"
between buying and using a ticket makes it fail. The connection is tagged with the version it
was checked against (``CONNECT_VERSION_ATTR``), so the revocation signals and the
periodic access re-check close it as they close a token connection.

Tickets are credentials: nothing here logs one, and the log filter
(``wedsync.server.asgi_server.RedactTokens``) writes ``ticket=`` values as ``[redacted]``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import orjson
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection, transaction
from redis.exceptions import RedisError

from core.db import in_db_thread
from core.redis import shared_client
from weddings.caching import auser_cached

from .models import ConnectTicket
from .tokens import TokenError, TokenInvalid, _fingerprint, _token_user, atoken_version

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser as User

logger = logging.getLogger(__name__)

# 256 bits: not guessable, however many handshakes an attacker makes within a lifetime.
TICKET_BYTES = 32
# What ``secrets.token_urlsafe(32)`` gives: anything else is refused before any lookup.
_TICKET_FORMAT = re.compile(r"[A-Za-z0-9_-]{43}")
# A store that cannot be reached: the ticket is refused (issue: 503), never waved through.
_STORE_ERRORS = (OSError, DatabaseError, RedisError)


class TicketInvalid(TokenError):
    """Not a ticket of ours: unknown, already used, or its user no longer matches it."""

    code = "ticket_invalid"
    default_message = "The ticket is invalid or was already used."


class TicketExpired(TokenError):
    """A genuine ticket used after its lifetime (it is used up all the same)."""

    code = "ticket_expired"
    default_message = "The ticket has expired."


class TicketUnavailable(TokenError):
    """The ticket store could not be reached: the ticket cannot be checked, so it is
    refused (a credential is never accepted unchecked)."""

    code = "ticket_unavailable"
    default_message = "Tickets cannot be checked right now."


def _now() -> float:
    """The current Unix time; a function of its own so tests can move the ticket clock."""
    return time.time()


def ticket_ttl() -> int:
    """``REALTIME_TICKET_TTL`` in seconds; a value below 1 is a configuration error."""
    ttl = settings.REALTIME_TICKET_TTL
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        raise ImproperlyConfigured(f"REALTIME_TICKET_TTL must be at least 1 second, not {ttl!r}.")
    return ttl


def _digest(ticket: str) -> str:
    """The key a ticket is stored under: its SHA-256, so stored keys are no credentials."""
    return hashlib.sha256(ticket.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What a ticket stands for: the user, the token version and fingerprint it was bought
    with, and when it stops working (Unix seconds)."""

    user_id: int
    version: int
    fingerprint: str
    expires: float

    def dumps(self) -> bytes:
        return orjson.dumps([self.user_id, self.version, self.fingerprint, self.expires])

    @classmethod
    def loads(cls, raw: bytes) -> Grant:
        user_id, version, fingerprint, expires = orjson.loads(raw)
        return cls(int(user_id), int(version), str(fingerprint), float(expires))


class TicketStore(Protocol):
    """Where tickets wait for their one use."""

    async def put(self, digest: str, grant: Grant, ttl: int) -> None:
        """Keep ``grant`` under ``digest`` for at least ``ttl`` seconds."""

    async def take(self, digest: str) -> Grant | None:
        """The grant under ``digest``, removed in the same atomic step; None when there
        is none (never issued, already taken, or evicted)."""


class RedisTicketStore:
    """Tickets in Redis, shared by every server process: one key each, evicted by Redis
    once expired; taken with GETDEL, which reads and deletes in one command."""

    def __init__(self, url: str, key_prefix: str) -> None:
        self.url = url
        self.key_prefix = key_prefix

    def key(self, digest: str) -> str:
        return f"{self.key_prefix}:ticket:{digest}"

    async def put(self, digest: str, grant: Grant, ttl: int) -> None:
        client = shared_client(self.url)
        if not await client.set(self.key(digest), grant.dumps(), ex=ttl, nx=True):
            # 256 random bits never collide; if they did, neither holder may get the other's.
            raise RuntimeError("a ticket with this digest is already waiting")

    async def take(self, digest: str) -> Grant | None:
        raw = await shared_client(self.url).getdel(self.key(digest))
        return None if raw is None else Grant.loads(raw)


def _db_put(digest: str, grant: Grant) -> None:
    """Insert a ticket's row, deleting the expired rows first (runs in a database thread).

    Cleaning on issue keeps the table as small as the tickets of the last TTL, with no
    periodic task: the range delete on the indexed expiry finds nothing most of the time.
    """
    with transaction.atomic():
        ConnectTicket.objects.filter(expires__lte=_now()).delete()
        ConnectTicket.objects.create(
            digest=digest,
            user_id=grant.user_id,
            version=grant.version,
            fingerprint=grant.fingerprint,
            expires=grant.expires,
        )


def _take_sql() -> str:
    """One statement that deletes a ticket's row and returns it: PostgreSQL and SQLite
    (3.35+) both have DELETE … RETURNING. Of concurrent statements for one row, one
    deletes it and gets it; the others find no row (PostgreSQL re-checks the row after
    the first commits; SQLite runs one write at a time)."""
    meta, quote = ConnectTicket._meta, connection.ops.quote_name
    columns = ", ".join(
        quote(meta.get_field(name).column) for name in ("user", "version", "fingerprint", "expires")
    )
    table, key = quote(meta.db_table), quote(meta.pk.column)
    # Names from _meta, the one value a parameter.
    return f"DELETE FROM {table} WHERE {key} = %s RETURNING {columns}"  # noqa: S608


def _db_take(digest: str) -> Grant | None:
    """Delete a ticket's row and return its grant (runs in a database thread)."""
    with connection.cursor() as cursor:
        cursor.execute(_take_sql(), [digest])
        row = cursor.fetchone()
    if row is None:
        return None
    user_id, version, fingerprint, expires = row
    return Grant(int(user_id), int(version), fingerprint, float(expires))


class DatabaseTicketStore:
    """Tickets in the database, for the embedded default (no Redis): shared by every
    process on the database, each use one atomic DELETE … RETURNING."""

    async def put(self, digest: str, grant: Grant, ttl: int) -> None:
        await in_db_thread(_db_put)(digest, grant)  # the expiry is in the row

    async def take(self, digest: str) -> Grant | None:
        return await in_db_thread(_db_take)(digest)


def get_ticket_store() -> TicketStore:
    """Redis with ``REDIS_URL`` (keys under CACHE_NAMESPACE), else the database."""
    if settings.REDIS_URL:
        return RedisTicketStore(settings.REDIS_URL, settings.CACHE_NAMESPACE)
    return DatabaseTicketStore()


async def ticket_issue(*, user: User, not_after: float | None = None) -> tuple[str, int]:
    """A new ticket for ``user`` and the whole seconds it is valid; called by the ticket
    API once the user is authenticated and within its token-issue budget.

    ``not_after`` (Unix seconds) caps the expiry, as for tokens: a ticket bought with a
    bearer token never outlives that token. Raises TicketUnavailable when the store
    cannot be reached.
    """
    if user.pk is None or not user.is_active:
        raise ValueError("Cannot issue a ticket for an unsaved or inactive user.")
    ttl = ticket_ttl()
    version = await atoken_version(user.pk)
    now = _now()
    # The lifetime is kept apart from the expiry: (now + 30) - now need not be 30 in floats.
    lifetime = float(ttl) if not_after is None else min(float(ttl), not_after - now)
    grant = Grant(user.pk, version, _fingerprint(user, version), now + lifetime)
    ticket = secrets.token_urlsafe(TICKET_BYTES)
    try:
        await get_ticket_store().put(_digest(ticket), grant, max(1, math.ceil(lifetime)))
    except _STORE_ERRORS as exc:
        logger.warning("connect tickets: the store is unreachable (%s)", type(exc).__name__)
        raise TicketUnavailable() from None
    return ticket, max(0, math.floor(lifetime))


async def aticket_authenticate(ticket: str) -> User:
    """The user a ticket was bought for, using the ticket up; raises a TokenError
    subclass when it must be refused. Called by the WebSocket handshake."""
    if not isinstance(ticket, str) or not _TICKET_FORMAT.fullmatch(ticket):
        raise TicketInvalid()
    try:
        grant = await get_ticket_store().take(_digest(ticket))
    except _STORE_ERRORS as exc:
        logger.warning("connect tickets: the store is unreachable (%s)", type(exc).__name__)
        raise TicketUnavailable() from None
    if grant is None:
        raise TicketInvalid()
    if _now() >= grant.expires:
        raise TicketExpired()
    user = await auser_cached(grant.user_id)
    version = await atoken_version(user.pk) if user is not None else 0
    try:
        return _token_user(user, grant.fingerprint, version)
    except TokenInvalid:  # the user is gone, or changed password or token version
        raise TicketInvalid() from None
