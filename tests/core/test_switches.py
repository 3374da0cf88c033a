"""Audited switches by name (core.switches): what realtime reads of scaling's wedding-day
mode without importing scaling, and what it reads when nobody registered the switch."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from core import switches
from scaling.selectors import WEDDING_DAY_MODE
from scaling.services import wedding_day_mode_set

pytestmark = pytest.mark.django_db


def test_state__a_switch_nobody_registered_reads_as_off():
    assert switches.state("no_such_switch") == switches.OFF
    assert switches.state("no_such_switch") is not switches.OFF  # a copy: callers may edit


async def test_astate__a_switch_nobody_registered_reads_as_off_on_the_loop():
    assert await switches.astate("no_such_switch") == switches.OFF


def test_state__scaling_registered_wedding_day_mode_and_its_changes_show_by_name():
    # given scaling's ready() registered the switch: off until someone switches it
    assert switches.state("wedding_day_mode")["enabled"] is False

    # when it is switched on through scaling's service
    wedding_day_mode_set(enabled=True, reason="Saturday", user=None)

    # then anyone reading it by name sees the change (the cached state was dropped)
    state = switches.state("wedding_day_mode")
    assert state["enabled"] is True and state["reason"] == "Saturday"


def test_set__refuses_a_blank_or_overlong_reason_and_stores_nothing():
    for reason in ("", "   ", "x" * 501, None):
        with pytest.raises(ValidationError) as caught:
            WEDDING_DAY_MODE.set(enabled=True, reason=reason, user=None)
        assert "reason" in caught.value.message_dict
    with pytest.raises(ValidationError):
        WEDDING_DAY_MODE.set(enabled="yes", reason="Saturday", user=None)
    assert not WEDDING_DAY_MODE.model.objects.exists()
