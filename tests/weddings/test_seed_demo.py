"""The demo Saturday: ``weddings.demo.seed_demo`` and ``manage.py seed_demo`` (PROTOCOL §10)."""

from __future__ import annotations

import datetime as dt
import io
import re

import orjson
import pytest
from django.contrib.auth import authenticate as _authenticate
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import MD5PasswordHasher
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from realtime.tokens import token_authenticate
from tests.factories import make_user
from weddings import demo
from weddings.demo import DemoSeedError, coming_saturday, seed_demo
from weddings.models import Booking, Supplier, SupplierMembership, TimelineItem, Wedding


def authenticate(**credentials: str):
    """A sign-in as the login form makes it: with a request (django-axes needs one)."""
    return _authenticate(RequestFactory().post("/accounts/login/"), **credentials)


pytestmark = pytest.mark.django_db

User = get_user_model()


class CountingHasher(MD5PasswordHasher):
    """Fast (tests only) and counts how many passwords were hashed."""

    algorithm = "counting_md5"
    encoded = 0

    def encode(self, password, salt):
        type(self).encoded += 1
        return super().encode(password, salt)


@pytest.fixture(autouse=True)
def _fast_hasher(settings):
    # The real PBKDF2 takes ~0.3 s per check; these tests check a dozen logins per run.
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    CountingHasher.encoded = 0


def _seed(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("seed_demo", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _seed_json(weddings: int, vendors: int, *extra: str) -> dict:
    out, _ = _seed(
        "--weddings", str(weddings), "--vendors-per-wedding", str(vendors), "--json", *extra
    )
    return orjson.loads(out)


def _check_login(login: object) -> None:
    assert isinstance(login, dict)
    for key in ("username", "password", "token"):
        assert isinstance(login[key], str) and login[key], key


def _check_document(document: object, *, weddings: int, vendors: int) -> None:
    """The §10 contract: keys and types, nothing more."""
    assert isinstance(document, dict)
    assert isinstance(document["weddings"], list) and len(document["weddings"]) == weddings
    for wedding in document["weddings"]:
        assert isinstance(wedding, dict)
        assert isinstance(wedding["id"], int) and not isinstance(wedding["id"], bool)
        assert wedding["topic"] == f"wedding:{wedding['id']}"
        assert dt.date.fromisoformat(wedding["date"]).weekday() == 5  # Saturday
        suppliers = wedding["suppliers"]
        assert isinstance(suppliers, list) and len(suppliers) == vendors
        for supplier in suppliers:
            assert isinstance(supplier, dict)
            assert isinstance(supplier["id"], int)
            assert supplier["category"] in Supplier.Category.values
            assert isinstance(supplier["users"], list) and len(supplier["users"]) == 1
            for login in supplier["users"]:
                _check_login(login)
        assert suppliers[0]["category"] == "planner"
        assert all(s["category"] != "planner" for s in suppliers[1:])
        _check_login(wedding["couple"])
    _check_login(document["staff"])
    assert document["staff"]["username"] == "staff"


def _logins(document: dict) -> list[dict]:
    logins = [document["staff"]]
    for wedding in document["weddings"]:
        logins += [login for s in wedding["suppliers"] for login in s["users"]]
        logins.append(wedding["couple"])
    return logins


# --- the JSON document ------------------------------------------------------------------


def test_seed_demo__json_matches_the_contract():
    document = _seed_json(2, 3)

    _check_document(document, weddings=2, vendors=3)
    assert Wedding.objects.filter(pk__in=[w["id"] for w in document["weddings"]]).count() == 2


def test_seed_demo__json_stdout_holds_nothing_but_the_document():
    # 5 x 40 is large enough to report progress
    out, err = _seed("--weddings", "5", "--vendors-per-wedding", "40", "--json")

    assert out.strip().startswith("{") and out.strip().endswith("}")
    _check_document(orjson.loads(out), weddings=5, vendors=40)
    assert err  # progress went to stderr, not stdout


def test_seed_demo__large_run_reports_progress_on_stderr():
    _, err = _seed("--weddings", "5", "--vendors-per-wedding", "40", "--json")

    lines = err.strip().splitlines()
    done = [int(re.search(r"(\d+)/5 weddings", line).group(1)) for line in lines]
    assert done == sorted(done) and done[-1] == 5


def test_seed_demo__small_run_is_quiet_on_stderr():
    _, err = _seed("--weddings", "2", "--vendors-per-wedding", "3", "--json")

    assert err == ""


def test_seed_demo__every_token_authenticates_its_user():
    document = _seed_json(2, 3)

    for login in _logins(document):
        assert token_authenticate(login["token"]).get_username() == login["username"]


def test_seed_demo__token_ttl_is_honoured(monkeypatch):
    from realtime import tokens

    document = _seed_json(1, 2, "--token-ttl", "60")

    monkeypatch.setattr(tokens, "_now", lambda: timezone.now().timestamp() + 120)
    with pytest.raises(tokens.TokenExpired):
        token_authenticate(document["weddings"][0]["couple"]["token"])


def test_seed_demo__every_password_logs_in():
    document = _seed_json(2, 3)

    for login in _logins(document):
        user = authenticate(username=login["username"], password=login["password"])
        assert user is not None and user.get_username() == login["username"]
    assert authenticate(username="staff", password="not-the-password") is None


def test_seed_demo__usernames_are_unique_and_name_their_wedding():
    document = _seed_json(2, 12)

    for wedding in document["weddings"]:
        names = [s["users"][0]["username"] for s in wedding["suppliers"]]
        names.append(wedding["couple"]["username"])
        assert all(name.startswith(f"w{wedding['id']}-") for name in names)
    usernames = [login["username"] for login in _logins(document)]
    assert len(usernames) == len(set(usernames))
    assert User.objects.filter(username__in=usernames).count() == len(usernames)


def test_seed_demo__other_categories_cycle_after_the_planner():
    document = _seed_json(1, 12)

    categories = [s["category"] for s in document["weddings"][0]["suppliers"]]
    others = [c for c in Supplier.Category.values if c != "planner"]
    assert categories == ["planner", *others, others[0]]


# --- what is in the database ------------------------------------------------------------


def test_seed_demo__suppliers_are_booked_with_one_member_each():
    document = _seed_json(2, 4)

    for entry in document["weddings"]:
        wedding = Wedding.objects.get(pk=entry["id"])
        supplier_ids = [s["id"] for s in entry["suppliers"]]
        bookings = Booking.objects.filter(wedding=wedding)
        assert sorted(bookings.values_list("supplier_id", flat=True)) == sorted(supplier_ids)
        assert all(booking.active for booking in bookings)
        for supplier in entry["suppliers"]:
            membership = SupplierMembership.objects.get(supplier_id=supplier["id"])
            assert membership.user.get_username() == supplier["users"][0]["username"]
            expected_role = "coordinator" if supplier["category"] == "planner" else "member"
            assert membership.role == expected_role


def test_seed_demo__couple_is_attached_to_its_wedding():
    document = _seed_json(2, 2)

    for entry in document["weddings"]:
        wedding = Wedding.objects.get(pk=entry["id"])
        assert [u.get_username() for u in wedding.couple.all()] == [entry["couple"]["username"]]


def test_seed_demo__weddings_are_on_the_coming_saturday():
    document = _seed_json(3, 1)

    today = timezone.localdate()
    for entry in document["weddings"]:
        wedding = Wedding.objects.get(pk=entry["id"])
        assert wedding.date.weekday() == 5
        assert 0 <= (wedding.date - today).days < 7
        assert dt.time(12) <= wedding.ceremony_time <= dt.time(16)
        assert wedding.venue_name and wedding.guest_count > 0


def test_coming_saturday__is_today_on_a_saturday_and_the_next_one_otherwise():
    assert coming_saturday(dt.date(2026, 6, 13)) == dt.date(2026, 6, 13)  # a Saturday
    assert coming_saturday(dt.date(2026, 6, 14)) == dt.date(2026, 6, 20)  # Sunday
    assert coming_saturday(dt.date(2026, 6, 12)) == dt.date(2026, 6, 13)  # Friday


def test_seed_demo__timeline_has_key_moments_and_one_pinned_slot():
    document = _seed_json(3, 6)

    for entry in document["weddings"]:
        wedding = Wedding.objects.get(pk=entry["id"])
        items = list(TimelineItem.objects.filter(wedding=wedding).prefetch_related("suppliers"))
        titles = [item.title for item in items]
        assert 10 <= len(items) <= 16
        assert sum(item.key_moment for item in items) >= 1
        assert {"Ceremony", "First dance"} <= {i.title for i in items if i.key_moment}
        assert sum(item.pinned for item in items) == 1
        assert all(item.ends_at >= item.starts_at for item in items)
        assert all(item.suppliers.all() for item in items), titles
        # the ceremony is at the wedding's local clock time, in its time zone
        ceremony = next(item for item in items if item.title == "Ceremony")
        local = ceremony.starts_at.astimezone(wedding.zone)
        assert (local.date(), local.time()) == (wedding.date, wedding.ceremony_time)
        # the planner works every item; photographers the photo items
        planner_id = entry["suppliers"][0]["id"]
        assert all(planner_id in {s.pk for s in item.suppliers.all()} for item in items)
        photos = next(item for item in items if "photos" in item.title.lower())
        assert {s.category for s in photos.suppliers.all()} >= {"planner", "photographer"}


def test_seed_demo__timeline_keeps_local_clock_times_in_summer(monkeypatch):
    # given a Saturday in British Summer Time, when local time is UTC+1 (Dublin too)
    monkeypatch.setattr(demo, "coming_saturday", lambda: dt.date(2026, 6, 13))

    # when
    document = seed_demo(weddings=4, vendors_per_wedding=2)

    # then items sit at the local clock times, an hour after the same UTC clock times
    for entry in document["weddings"]:
        wedding = Wedding.objects.get(pk=entry["id"])
        items = {item.title: item for item in wedding.timeline_items.all()}
        ceremony = items["Ceremony"].starts_at
        assert ceremony.astimezone(wedding.zone).time() == wedding.ceremony_time
        assert ceremony.astimezone(dt.UTC).hour == wedding.ceremony_time.hour - 1
        # and a June sunset comes after the ceremony, in the evening
        sunset = items["Sunset portraits"].starts_at.astimezone(wedding.zone)
        assert sunset > ceremony and dt.time(20) <= sunset.time() <= dt.time(22)


def test_seed_demo__one_vendor_is_just_the_planner():
    document = _seed_json(1, 1)

    suppliers = document["weddings"][0]["suppliers"]
    assert [s["category"] for s in suppliers] == ["planner"]
    assert TimelineItem.objects.filter(wedding_id=document["weddings"][0]["id"]).exists()


# --- staff and re-runs ------------------------------------------------------------------


def _account(username: str) -> dict:
    """Every stored field of an account (password hash, flags, names, last login ...)."""
    return User.objects.filter(username=username).values().get()


def test_seed_demo__rerun_leaves_the_staff_account_and_its_password_alone():
    # given a first run, which created staff with its password
    first = _seed_json(1, 2)
    before = _account("staff")

    # when seeding again
    second = _seed_json(1, 2)

    # then there are new weddings, one staff user, and nothing about it changed: the
    # first run's password still logs in and the rerun gives none for it
    assert first["weddings"][0]["id"] != second["weddings"][0]["id"]
    assert User.objects.filter(username="staff").count() == 1
    assert _account("staff") == before
    staff = authenticate(username="staff", password=first["staff"]["password"])
    assert staff is not None and staff.is_staff and staff.is_superuser
    assert second["staff"]["username"] == "staff" and second["staff"]["password"] is None
    assert second["staff"]["user_id"] == staff.pk
    assert token_authenticate(second["staff"]["token"]) == staff
    # and this run's password is not staff's
    couple_password = second["weddings"][0]["couple"]["password"]
    assert authenticate(username="staff", password=couple_password) is None


def test_seed_demo__leaves_an_existing_staff_account_exactly_as_it_is():
    # given an account named "staff" that seed_demo did not make (not even staff)
    make_user(username="staff", first_name="Real", email="ops@example.org")
    before = _account("staff")

    document = _seed_json(1, 1)

    # then it is neither promoted nor given a new password
    assert _account("staff") == before
    assert authenticate(username="staff", password="pw-staff") is not None
    assert document["staff"]["password"] is None
    assert not User.objects.get(username="staff").check_password(
        document["weddings"][0]["couple"]["password"]
    )


def test_seed_demo__existing_staff__summary_says_its_password_is_unchanged():
    make_user(username="staff", is_staff=True, is_superuser=True)
    before = _account("staff")

    out, _ = _seed("--weddings", "1", "--vendors-per-wedding", "2")

    assert "staff: existing account, password unchanged" in out
    assert _account("staff") == before
    assert authenticate(username="staff", password="pw-staff") is not None


def test_seed_demo__fresh_database__staff_is_created_with_this_runs_password():
    document = _seed_json(1, 1)

    staff = authenticate(username="staff", password=document["staff"]["password"])
    assert staff is not None and staff.is_staff and staff.is_superuser and staff.is_active
    assert document["staff"]["password"] == document["weddings"][0]["couple"]["password"]


def test_seed_demo__human_summary_names_topics_and_logins():
    out, _ = _seed("--weddings", "2", "--vendors-per-wedding", "3")

    wedding_ids = Wedding.objects.values_list("pk", flat=True)
    for pk in wedding_ids:
        assert f"wedding:{pk}" in out
        assert f"w{pk}-planner-1" in out and f"w{pk}-couple" in out
    assert "staff" in out
    password_line = next(line for line in out.splitlines() if "password" in line)
    password = password_line.rsplit(" ", 1)[-1]
    assert authenticate(username="staff", password=password) is not None


# --- speed ------------------------------------------------------------------------------


def test_seed_demo__hashes_one_password_per_run():
    seed_demo(weddings=3, vendors_per_wedding=10)

    assert CountingHasher.encoded == 1


def test_seed_demo__query_count_does_not_grow_with_vendors():
    # given a staff account made by an earlier run (read then, never written again)
    seed_demo(weddings=1, vendors_per_wedding=1)
    # and the queries of a small run
    with CaptureQueriesContext(connection) as small:
        seed_demo(weddings=1, vendors_per_wedding=3)

    # when the run has many more vendors (within one round of bulk inserts)
    with CaptureQueriesContext(connection) as large:
        seed_demo(weddings=1, vendors_per_wedding=40)

    # then the number of queries is the same: everything is inserted in bulk
    assert len(large) == len(small)


def test_seed_demo__reports_progress_about_every_tenth():
    calls: list[tuple[int, int]] = []

    seed_demo(weddings=25, vendors_per_wedding=1, progress=lambda *a: calls.append(a))

    assert calls[-1] == (25, 25)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert 5 <= len(calls) <= 25


# --- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--weddings", "0"),
        ("--weddings", "-3"),
        ("--weddings", "10001"),
        ("--vendors-per-wedding", "0"),
        ("--vendors-per-wedding", "501"),
        ("--weddings", "many"),
        ("--token-ttl", "0"),
        ("--token-ttl", str(10**9)),
    ],
)
def test_seed_demo__bad_arguments_are_a_command_error(args):
    with pytest.raises(CommandError):
        _seed(*args)

    assert not Wedding.objects.exists()
    assert not User.objects.exists()


def test_seed_demo__failure_midway_leaves_nothing_behind():
    # given token issuing fails partway through the run
    issued = 0

    def failing_token_issue(user):
        nonlocal issued
        issued += 1
        if issued > 5:
            raise RuntimeError("boom")
        return "token"

    # when
    with pytest.raises(RuntimeError):
        seed_demo(weddings=3, vendors_per_wedding=3, issue_token=failing_token_issue)

    # then the whole run was rolled back
    assert not Wedding.objects.exists()
    assert not Supplier.objects.exists()
    assert not User.objects.exists()


def test_seed_demo__clashing_username_is_refused_cleanly():
    # given a user that has the name the next wedding's couple will get
    wedding = Wedding.objects.create(
        partner_one="A", partner_two="B", date=dt.date(2026, 6, 13), ceremony_time=dt.time(14)
    )
    make_user(username=f"w{wedding.pk + 1}-couple")

    # when / then
    with pytest.raises(DemoSeedError, match="already exist"):
        seed_demo(weddings=1, vendors_per_wedding=1)
    assert Wedding.objects.count() == 1


def test_seed_demo__logins_carry_a_token_only_when_an_issuer_is_given():
    # given the domain's seed without realtime's issuer, and with a stand-in one
    bare = seed_demo(weddings=1, vendors_per_wedding=1, with_staff=False)
    issued = []
    stamped = seed_demo(
        weddings=1, vendors_per_wedding=1, with_staff=False,
        issue_token=lambda user: issued.append(user.pk) or f"t{user.pk}",
    )  # fmt: skip

    # then the first has no tokens; the second one per login, from the issuer
    assert "token" not in bare["weddings"][0]["couple"]
    couple = stamped["weddings"][0]["couple"]
    assert couple["token"] == f"t{couple['user_id']}"
    assert couple["user_id"] in issued
