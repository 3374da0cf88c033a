"""Migrate the database of ``DATABASE_URL`` and seed one wedding for the multihost test.

Run as ``python -m tests.multihost.seed USERS`` by ``processes.seed``, in a process of
its own because the test process's ORM is bound to the test run's database, not to the
private cluster on the data host. Prints one JSON line: the wedding's topic and a token
for each of USERS vendors, each of their own supplier booked on it (so that no
per-supplier connection limit is shared between the test's clients).
"""

from __future__ import annotations

import json
import sys

import django


def main(users: int) -> None:
    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from realtime.tokens import token_issue
    from tests.factories import make_booking, make_supplier, make_user, make_wedding

    # The real hasher costs ~0.3 s a user and is not what this test is about.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    call_command("migrate", verbosity=0, interactive=False)
    wedding = make_wedding()
    people = [make_user() for _ in range(users)]
    for person in people:
        make_booking(supplier=make_supplier(users=(person,)), wedding=wedding)
    tokens = [token_issue(user=person) for person in people]
    print(json.dumps({"topic": wedding.topic, "tokens": tokens}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
