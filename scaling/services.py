"""Writes of wedding-day operations: switching wedding-day mode, the scaling evaluation
(decide, persist, apply, broadcast) with its wedding-day mode automation, and the
emergency check of the fast reactive path."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.cache import get_cache
from core.switches import switch_reason_clean
from realtime.models import Event
from realtime.services import event_publish_system
from scaling import readings, selectors
from scaling.actuators import ActuatorResult, Desired, get_actuator
from scaling.decisions import Decision, ScalingPolicy, decide, weddings_in_window
from scaling.demand import WeddingPlan, forecast, learn_correction
from scaling.emergency import (
    EmergencyThresholds,
    FastReading,
    breaches,
    emergency_decide,
    severity,
)
from scaling.models import REASON_MAX_LENGTH, ScalingDecision, WeddingDayModeChange
from scaling.selectors import decision_payload, wedding_day_mode_invalidate
from scaling.signals import decision_applied
from weddings.models import Wedding

logger = logging.getLogger(__name__)


def wedding_day_mode_set(*, enabled: bool, reason: str, user: Any) -> WeddingDayModeChange:
    """Switch wedding-day mode on or off, recording who did it and why.

    ``reason`` is required (1 to 500 characters, not blank); ``user`` may be None for
    an automated change. The cached mode is dropped after commit. Raises
    ``ValidationError`` naming the field; nothing is stored then.
    """
    reason = switch_reason_clean(enabled, reason, REASON_MAX_LENGTH)
    changed_by = user if user is not None and getattr(user, "pk", None) else None
    with transaction.atomic():
        change = WeddingDayModeChange.objects.create(
            enabled=enabled, reason=reason, changed_by=changed_by
        )
        wedding_day_mode_invalidate()
    return change


def wedding_day_mode_automate(*, in_window: Sequence[WeddingPlan]) -> WeddingDayModeChange | None:
    """Switch wedding-day mode on while any wedding is in its window and off after, as an
    automated change (``changed_by`` None); called by each scaling evaluation.

    A change made by a person is never overridden: while the latest change has a
    ``changed_by``, this does nothing. Returns the change made, if any.
    """
    latest = WeddingDayModeChange.objects.order_by("-changed_at", "-id").first()
    if latest is not None and latest.changed_by_id is not None:
        return None
    enabled = latest is not None and latest.enabled
    if in_window and not enabled:
        names = dict(
            (w.pk, str(w)) for w in Wedding.objects.filter(pk__in=[p.wedding_id for p in in_window])
        )
        listed = ", ".join(f"#{p.wedding_id} {names.get(p.wedding_id, '')}" for p in in_window)
        reason = f"automatic: {len(in_window)} wedding(s) in their window: {listed}"
        if len(reason) > REASON_MAX_LENGTH:
            reason = reason[: REASON_MAX_LENGTH - 1] + "…"
        logger.warning("wedding-day mode on: %s", reason)
        return wedding_day_mode_set(enabled=True, reason=reason, user=None)
    if not in_window and enabled:
        reason = "automatic: no wedding is in its window any more"
        logger.warning("wedding-day mode off: %s", reason)
        return wedding_day_mode_set(enabled=False, reason=reason, user=None)
    return None


def scaling_evaluate(
    *, now: dt.datetime | None = None, policy: ScalingPolicy | None = None
) -> ScalingDecision | None:
    """Forecast, decide, and when the desired capacity changes (or a new 24-hour notice
    is due) persist the decision, apply it through the configured actuator and broadcast
    ``scaling.decided`` on ``ops``. Called every minute by beat
    (``scaling.tasks.evaluate_scaling``); also switches wedding-day mode automatically.

    Returns the stored decision, or None when nothing changed (a "hold" with no new
    notice is not stored: one row a minute of "no change" would bury the real ones).
    """
    now = now or timezone.now()
    policy = policy or selectors.scaling_policy()
    plans, observations = selectors.demand_inputs(now=now)
    predicted = forecast(plans, now, learn_correction(plans, observations))
    current, measured_at = selectors.current_metrics(now=now)
    capacity = selectors.current_capacity(policy=policy)
    decision = decide(predicted, current, capacity, policy, now)

    in_window = weddings_in_window(predicted.weddings, now, policy.window_lead)
    wedding_day_mode_automate(in_window=in_window)

    # The first decision (or the first since every apply failed) is the baseline.
    first = not selectors.capacity_known()
    before = (capacity.asgi_processes, capacity.celery_workers, capacity.connection_limit)
    after = (decision.asgi_processes, decision.celery_workers, decision.connection_limit)
    changed = after != before
    notice_due = decision.notice is not None and not selectors.notice_posted(
        peak_at=decision.notice.peak_at, now=now, lead=policy.notice_lead
    )
    if not (first or changed or notice_due):
        return None
    taken = measured_at.isoformat() if measured_at else None
    inputs = {**decision.inputs, "metrics_taken_at": taken}
    return _decision_record(
        decision=decision,
        capacity_before=before,
        apply=changed or first,
        notice_due=notice_due,
        inputs=inputs,
        now=now,
    )


# The emergency check's streak (how many readings in a row were over a limit, and when the
# last was read), shared by every worker process through the cache: beat hands each run
# to whichever process is free.
FAST_STATE_KEY = "scaling:fast-streak:v1"
# Readings in a row over a limit before the emergency rule acts: one is a blip.
FAST_STREAK = 2


def scaling_emergency_check(
    *,
    now: dt.datetime | None = None,
    reading: FastReading | None = None,
    policy: ScalingPolicy | None = None,
    limits: EmergencyThresholds | None = None,
) -> ScalingDecision | None:
    """The fast reactive path: compare the live figures with the emergency limits and,
    when they are over in ``FAST_STREAK`` consecutive readings, store, apply and broadcast
    an emergency scale-out at once (bypassing the scale-out cooldown, never scaling in).
    Called every ``SCALING_FAST_INTERVAL`` seconds by beat
    (``scaling.tasks.emergency_check``); ``reading`` defaults to ``readings.fast()``.

    Within ``scale_out_cooldown`` of an emergency scale-out another one needs a breach
    ``limits.growth`` times as severe. The row is an ordinary applied change, so the
    minute evaluation's scale-in cooldown holds the new capacity. Returns the stored
    decision, or None.
    """
    reading = reading if reading is not None else readings.fast()
    if reading is None:
        return None
    now = now or timezone.now()
    policy = policy or selectors.scaling_policy()
    limits = limits or selectors.emergency_thresholds()
    interval = float(settings.SCALING_FAST_INTERVAL)
    capacity = selectors.current_capacity(policy=policy)
    found = breaches(reading, capacity, policy, limits)

    cache = get_cache()
    at = reading.at.timestamp()
    state = cache.get(FAST_STATE_KEY) or {}
    # Consecutive: the previous check read a breach too, at most two intervals ago (one
    # run that beat dropped as expired does not break the streak; a longer gap does).
    consecutive = state.get("streak", 0) > 0 and 0 < at - state.get("at", 0) <= 2 * interval
    streak = (state["streak"] + 1 if consecutive else 1) if found else 0
    cache.set(FAST_STATE_KEY, {"at": at, "streak": streak}, ttl=max(60.0, 4 * interval))
    if streak < FAST_STREAK:
        if found:
            logger.info("scaling: emergency limit over, reading %s: %s", streak,
                        "; ".join(b.text for b in found))  # fmt: skip
        return None

    worst = severity(found)
    last = selectors.last_emergency(since=now - policy.scale_out_cooldown)
    if last is not None and worst < last.inputs["emergency"]["severity"] * limits.growth:
        return None
    decision = emergency_decide(
        reading, found, capacity, policy, now, streak=streak, interval=interval
    )
    if decision is None:
        logger.warning("scaling: emergency limit over but at the maximum capacity: %s",
                       "; ".join(b.text for b in found))  # fmt: skip
        return None
    logger.warning("scaling: emergency scale-out: %s", decision.reason)
    before = (capacity.asgi_processes, capacity.celery_workers, capacity.connection_limit)
    return _decision_record(
        decision=decision,
        capacity_before=before,
        apply=True,
        notice_due=False,
        inputs=decision.inputs,
        now=now,
    )


def _decision_record(
    *,
    decision: Decision,
    capacity_before: tuple[int, int, int],
    apply: bool,
    notice_due: bool,
    inputs: dict[str, Any],
    now: dt.datetime,
) -> ScalingDecision:
    """Store the decision, run the actuator (outside any transaction: a command may take
    its whole timeout), then record its result and broadcast, together."""
    actuator = get_actuator()
    with transaction.atomic():
        row = ScalingDecision.objects.create(
            made_at=now,
            action=decision.action,
            asgi_processes=decision.asgi_processes,
            celery_workers=decision.celery_workers,
            connection_limit=decision.connection_limit,
            previous_asgi_processes=capacity_before[0],
            previous_celery_workers=capacity_before[1],
            previous_connection_limit=capacity_before[2],
            reason=decision.reason,
            inputs=inputs,
            notice_peak_at=decision.notice.peak_at if notice_due and decision.notice else None,
            actuator=actuator.name,
        )
    if apply:
        result = actuator.apply(
            Desired(decision.asgi_processes, decision.celery_workers, decision.connection_limit)
        )
        status = ScalingDecision.Status.APPLIED if result.ok else ScalingDecision.Status.FAILED
    else:
        result = ActuatorResult(ok=True, output="nothing to apply: a notice only")
        status = ScalingDecision.Status.SKIPPED
    if not result.ok:
        logger.error(
            "scaling: actuator %s failed to apply decision %s (asgi=%s workers=%s): %s",
            actuator.name, row.pk, row.asgi_processes, row.celery_workers, result.output,
        )  # fmt: skip
    with transaction.atomic():
        row.actuator_status = status
        row.actuator_returncode = result.returncode
        row.actuator_output = result.output
        row.save(update_fields=["actuator_status", "actuator_returncode", "actuator_output"])
        priority = Event.Priority.NORMAL if result.ok else Event.Priority.CRITICAL
        event_publish_system("ops", "scaling.decided", decision_payload(row, decision), priority)
    if apply:
        # Observers (monitoring's rule scaling_actuator_failed: an alert that opens on the
        # first failure, turns critical after three in a row and resolves with the next
        # decision applied).
        decision_applied.send(
            sender=ScalingDecision,
            decision=row,
            failures_in_a_row=selectors.failures_in_a_row(),
            message=f"the {actuator.name} actuator could not apply decision {row.pk}: "
            f"{result.output[:200]}",
        )
    return row
