"""``python manage.py issue_token USERNAME [--ttl SECONDS]``: a realtime token (PROTOCOL §10).

The token is the last line on stdout, alone, so ``TOKEN=$(python manage.py issue_token
alice)`` works; who it is for and until when goes to stderr.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.tokens import token_expires_at, token_issue


class Command(BaseCommand):
    help = "Print a realtime token for USERNAME (for ?token= or Authorization: Bearer)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="The user the token authenticates as.")
        parser.add_argument(
            "--ttl",
            type=int,
            default=None,
            metavar="SECONDS",
            help=(
                f"Lifetime in seconds (default {settings.REALTIME_TOKEN_TTL}, "
                f"at most {settings.REALTIME_TOKEN_MAX_TTL})."
            ),
        )

    def handle(self, *args, username: str, ttl: int | None, **options) -> None:
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"No user named {username!r}.") from None
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive: a token would not authenticate.")
        try:
            token = token_issue(user=user, ttl=ttl)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        expires = dt.datetime.fromtimestamp(token_expires_at(token), tz=dt.UTC)
        self.stderr.write(
            f"Token for {user.get_username()} (user id {user.pk}), "
            f"valid until {expires:%Y-%m-%d %H:%M:%S} UTC:",
            style_func=str,
        )
        self.stdout.write(token)
