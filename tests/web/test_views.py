"""The web app's views through Django's test client: who may see what, CSRF, 404s.

No browser here: these check the HTML and JSON the server sends, including that no
other wedding's data is in them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from realtime.services import ack_record, event_publish
from tests.factories import make_booking, make_user, make_wedding
from tests.web.conftest import Day, without_csrf
from weddings.models import Booking

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(30)]

MISSING_ID = 987_654_321


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def embedded_state(response: Any) -> dict[str, Any]:
    match = re.search(
        r'<script id="wedding-state" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert match, "the page embeds its state"
    return json.loads(match.group(1))


def other_wedding_words(day: Day) -> list[str]:
    """What of the other wedding must never reach this wedding's people."""
    return ["Olivia", "Rhys", "Cliffside Chapel", "Harbour toast", f"wedding:{day.other.pk}"]


# --- sign-in and sign-out ----------------------------------------------------------------


def test_home__anonymous_is_sent_to_sign_in() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def set_password(user: Any, password: str) -> None:
    user.set_password(password)
    user.save(update_fields=["password"])


def test_sign_in__wrong_password_is_refused_with_a_message(day: Day) -> None:
    set_password(day.planner, "the right one")
    response = Client().post(
        reverse("web:login"), {"username": day.planner.username, "password": "wrong"}
    )
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert "_auth_user_id" not in response.client.session


def test_sign_in__needs_the_csrf_token(day: Day) -> None:
    set_password(day.planner, "the right one")
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        reverse("web:login"), {"username": day.planner.username, "password": "the right one"}
    )
    assert response.status_code == 403
    # with the token from the form it works
    client.get(reverse("web:login"))
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    response = client.post(
        reverse("web:login"),
        {"username": day.planner.username, "password": "the right one",
         "csrfmiddlewaretoken": token},
    )  # fmt: skip
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_sign_out__is_a_post_with_csrf(day: Day) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(day.planner)
    assert client.get(reverse("web:logout")).status_code == 405
    assert client.post(reverse("web:logout")).status_code == 403
    assert client.get("/").status_code == 200  # still signed in
    client.get("/")
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    response = client.post(reverse("web:logout"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert response["Location"] == reverse("web:login")
    assert client.get("/").status_code == 302


def test_sign_in_page__lists_the_demo_logins_on_a_development_machine(
    settings: Any, tmp_path: Any
) -> None:
    def login(username: str) -> dict:
        return {"username": username, "password": "pw1"}

    demo = {
        "weddings": [
            {
                "id": 1,
                "name": "Mei & Daniel",
                "suppliers": [
                    {"category": "planner", "users": [login("w1-planner-1")]},
                    {"category": "photographer", "users": [login("w1-photographer-1")]},
                    {"category": "venue", "users": [login("w1-venue-1")]},
                ],
                "couple": login("w1-couple"),
            }
        ]
    }
    (tmp_path / "demo.json").write_text(json.dumps(demo))
    settings.VAR_DIR = tmp_path
    settings.DEBUG = True
    page = Client().get(reverse("web:login")).content.decode()
    for login in ("w1-planner-1", "w1-photographer-1", "w1-couple", "pw1", "Mei &amp; Daniel"):
        assert login in page
    assert "w1-venue-1" not in page
    # never with DEBUG off, whatever lies on disk
    settings.DEBUG = False
    page = Client().get(reverse("web:login")).content.decode()
    assert "w1-planner-1" not in page and "pw1" not in page


# --- My Saturday ------------------------------------------------------------------------


def test_saturday__vendor_sees_their_booked_weddings_from_today_on(day: Day) -> None:
    # given bookings of the photographer's supplier: today, next week, last week, lapsed
    today = day.wedding.date
    later = make_wedding(partner_one="Femi", partner_two="Grace", date=today + dt.timedelta(days=7))
    past = make_wedding(partner_one="Noah", partner_two="Maya", date=today - dt.timedelta(days=7))
    lapsed = make_wedding(partner_one="Liam", partner_two="Sofia", date=today)
    for wedding in (later, past):
        make_booking(supplier=day.photo_co, wedding=wedding)
    make_booking(supplier=day.photo_co, wedding=lapsed, active=False)

    # when the photographer opens My Saturday
    page = client_for(day.photographer).get("/").content.decode()

    # then today's and next week's weddings are listed, in date order, nothing else
    assert page.index("Aisha &amp; Tom") < page.index("Femi &amp; Grace")
    assert "Kestrel Photography · Photographer" in page
    for hidden in ("Noah", "Liam", *other_wedding_words(day)):
        assert hidden not in page


def test_saturday__couple_sees_their_own_wedding(day: Day) -> None:
    page = client_for(day.couple).get("/").content.decode()
    assert "Aisha &amp; Tom" in page and "Your wedding" in page
    for hidden in other_wedding_words(day):
        assert hidden not in page


def test_saturday__staff_see_every_wedding_of_today_only(day: Day) -> None:
    staff = make_user(is_staff=True)
    tomorrow = make_wedding(
        partner_one="Emma", partner_two="Jamal", date=day.wedding.date + dt.timedelta(days=2)
    )
    page = client_for(staff).get("/").content.decode()
    assert "Aisha &amp; Tom" in page and "Olivia &amp; Rhys" in page
    assert "Emma" not in page
    assert tomorrow.pk not in [w["id"] for w in _live_rows(page)]


def _live_rows(page: str) -> list[dict]:
    match = re.search(r'<script id="saturday-live" type="application/json">(.*?)</script>', page)
    return json.loads(match.group(1))["weddings"] if match else []


def test_saturday__rows_carry_each_topic_seq_for_the_changes_badge(day: Day) -> None:
    event_publish(topic=day.topic, event="message.posted", payload={"text": "hi"}, user=day.planner)
    event_publish(topic=day.topic, event="message.posted", payload={"text": "yo"}, user=day.planner)
    rows = _live_rows(client_for(day.photographer).get("/").content.decode())
    assert rows == [{"id": day.wedding.pk, "topic": day.topic, "seq": 2}]


def test_saturday__ceremony_is_shown_in_the_wedding_time_zone(day: Day) -> None:
    page = client_for(day.planner).get("/").content.decode()
    zone_name = dt.datetime.combine(
        day.wedding.date, day.wedding.ceremony_time, tzinfo=day.wedding.zone
    ).strftime("%Z")
    assert f"Ceremony {day.wedding.ceremony_time:%H:%M} {zone_name}" in page


# --- the wedding page --------------------------------------------------------------------


def test_wedding_page__hidden_and_missing_weddings_get_the_same_404(day: Day) -> None:
    client = client_for(day.outsider)
    hidden = client.get(reverse("web:wedding", args=[day.wedding.pk]))
    missing = client.get(reverse("web:wedding", args=[MISSING_ID]))
    assert hidden.status_code == missing.status_code == 404
    assert without_csrf(hidden.content.decode()) == without_csrf(missing.content.decode())
    for secret in ("Aisha", "Hartwell", "Ceremony", "Juniper", day.topic):
        assert secret not in hidden.content.decode()


def test_wedding_page__a_lapsed_booking_loses_the_page(day: Day) -> None:
    Booking.objects.filter(supplier=day.florist_co, wedding=day.wedding).update(active=False)
    response = client_for(day.florist).get(reverse("web:wedding", args=[day.wedding.pk]))
    assert response.status_code == 404


def test_wedding_page__anonymous_is_sent_to_sign_in_for_any_id(day: Day) -> None:
    for wedding_id in (day.wedding.pk, MISSING_ID):
        response = Client().get(reverse("web:wedding", args=[wedding_id]))
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next=/weddings/{wedding_id}/"


def test_wedding_page__holds_this_wedding_only(day: Day) -> None:
    # given activity on both weddings
    event_publish(
        topic=day.other.topic, event="message.posted", payload={"text": "Harbour boats ready"},
        user=day.outsider,
    )  # fmt: skip
    event_publish(
        topic=day.topic, event="message.posted", payload={"text": "Flowers in"}, user=day.florist
    )

    response = client_for(day.photographer).get(reverse("web:wedding", args=[day.wedding.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert "Aisha &amp; Tom" in html and "Flowers in" in html
    for secret in (*other_wedding_words(day), "Harbour boats", "Zara"):
        assert secret not in html
    assert response["Cache-Control"].startswith("max-age=0")


def test_wedding_page__state_is_consistent_at_its_seq(day: Day) -> None:
    # given messages, a resolved and an open emergency, one acknowledgement
    publish = lambda user, event, payload: event_publish(  # noqa: E731
        topic=day.topic, event=event, payload=payload, user=user
    )
    publish(day.planner, "message.posted", {"text": "Cars are here"})
    publish(day.planner, "emergency.raised", {"id": "old", "kind": "weather", "text": "Rain"})
    publish(day.planner, "emergency.resolved", {"id": "old"})
    publish(day.florist, "emergency.raised", {"id": "now", "kind": "medical", "text": "Fainted"})
    ack_record(user=day.photographer, topic=day.topic, seq=4)

    page = client_for(day.planner).get(reverse("web:wedding", args=[day.wedding.pk]))
    state = embedded_state(page)

    assert state["seq"] == 5  # four publishes and the ack.updated
    assert [f["seq"] for f in state["feed"]] == [1, 2, 3, 4]
    assert [e["frame"]["payload"]["id"] for e in state["emergencies"]] == ["now"]
    assert state["emergencies"][0]["acked"] == [day.photographer.pk]
    assert state["people"][str(day.photographer.pk)] == "Ben Okafor"
    assert [item["title"] for item in state["timeline"]][:2] == ["Getting ready", "Ceremony"]
    assert {s["id"] for s in state["suppliers"]} == {
        day.planner_co.pk, day.photo_co.pk, day.florist_co.pk
    }  # fmt: skip
    assert state["viewer"] == {
        "user_id": day.planner.pk,
        "name": "Priya Patel",
        "supplier_ids": [day.planner_co.pk],
        "can_edit": True,
        "is_staff": False,
        "read_only": False,
        "contacts": True,
    }


def test_wedding_page__roles_decide_the_controls(day: Day) -> None:
    path = reverse("web:wedding", args=[day.wedding.pk])
    planner = client_for(day.planner).get(path).content.decode()
    photographer = client_for(day.photographer).get(path).content.decode()
    couple_response = client_for(day.couple).get(path)
    couple = couple_response.content.decode()

    assert 'id="item-dialog"' in planner and 'id="composer"' in planner
    assert 'id="item-dialog"' not in photographer and 'id="composer"' in photographer
    assert 'id="my-status"' in photographer
    # the couple follow progress, read-only: no controls, no vendor messages
    for control in ('id="item-dialog"', 'id="composer"', 'id="my-status"', 'id="emergency-dialog"'):
        assert control not in couple
    viewer = embedded_state(couple_response)["viewer"]
    assert viewer["read_only"] and not viewer["can_edit"] and viewer["supplier_ids"] == []


def test_wedding_page__couple_gets_no_vendor_messages(day: Day) -> None:
    event_publish(
        topic=day.topic, event="message.posted", payload={"text": "Cake is late"}, user=day.planner
    )
    response = client_for(day.couple).get(reverse("web:wedding", args=[day.wedding.pk]))
    state = embedded_state(response)
    assert state["feed"] == [] and state["emergencies"] == []
    assert "Cake is late" not in response.content.decode()


def test_wedding_page__shift_asks_the_moved_suppliers_only(day: Day) -> None:
    ceremony = day.items["Ceremony"]
    event_publish(
        topic=day.topic, event="timeline.shifted",
        payload={"from_item_id": ceremony.pk, "minutes": 15}, user=day.planner,
    )  # fmt: skip
    path = reverse("web:wedding", args=[day.wedding.pk])
    photographer = embedded_state(client_for(day.photographer).get(path))
    assert [f["payload"]["minutes"] for f in photographer["shift_notices"]] == [15]
    # once acknowledged, it is not asked again
    ack_record(user=day.photographer, topic=day.topic, seq=1)
    assert embedded_state(client_for(day.photographer).get(path))["shift_notices"] == []


# --- the state endpoint ------------------------------------------------------------------


def test_state__json_for_the_page_and_the_same_404_for_hidden_and_missing(day: Day) -> None:
    url = lambda wedding_id: reverse("web:wedding-state", args=[wedding_id])  # noqa: E731
    own = client_for(day.photographer).get(url(day.wedding.pk))
    assert own.status_code == 200 and own.json()["topic"] == day.topic

    outsider = client_for(day.outsider)
    hidden, missing = outsider.get(url(day.wedding.pk)), outsider.get(url(MISSING_ID))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert "Aisha" not in hidden.content.decode()

    anonymous = Client().get(url(day.wedding.pk))
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"


def test_state__is_get_only(day: Day) -> None:
    response = client_for(day.planner).post(reverse("web:wedding-state", args=[day.wedding.pk]))
    assert response.status_code == 405


# --- static files in production ------------------------------------------------------------


def test_collectstatic__hashes_files_and_rewrites_module_imports(
    settings: Any, tmp_path: Any
) -> None:
    from django.core.management import call_command

    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "web.storage.HashedStaticFilesStorage"},
    }
    call_command("collectstatic", interactive=False, verbosity=0)

    manifest = json.loads((tmp_path / "staticfiles.json").read_text())["paths"]
    wedding_js = (tmp_path / manifest["web/wedding.js"]).read_text()
    for module in ("realtime.js", "editor.js", "util.js"):
        assert f'from "./{manifest[f"web/{module}"].split("/")[-1]}"' in wedding_js
    assert (tmp_path / (manifest["web/app.css"] + ".gz")).is_file()
    # and the pages link the hashed names
    page = Client().get(reverse("web:login")).content.decode()
    assert f'href="/static/{manifest["web/app.css"]}"' in page
