"""Writes of wedding-day operations: switching wedding-day mode, the scaling evaluation
(decide, persist, apply, broadcast) with its wedding-day mode automation and its capacity
reservations (ADR 0033), and the emergency check of the fast reactive path."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
from scaling.demand import Forecast, WeddingPlan, forecast, learn_correction
from scaling.emergency import (
    EmergencyThresholds,
    FastReading,
    breaches,
    emergency_decide,
    severity,
)
from scaling.models import (
    REASON_MAX_LENGTH,
    CapacityReservation,
    ScalingDecision,
    WeddingDayModeChange,
)
from scaling.selectors import decision_payload, reservation_payload, wedding_day_mode_invalidate
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
    changes = capacity_reservations_sync(
        predicted=predicted, now=now, policy=policy, lead=selectors.reservation_lead(policy)
    )
    reservations = selectors.active_reservations()
    decision = decide(predicted, current, capacity, policy, now, reservations)

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
    # A reservation coming into force or ending changes the minimums the actuator is
    # told (an autoscaler's own minimum follows them) even when the capacity stays.
    floor_moved = any(c in (_ACTIVATED, _RELEASED, _WITHDRAWN) for _, c in changes)
    if not (first or changed or notice_due or floor_moved):
        return None
    taken = measured_at.isoformat() if measured_at else None
    inputs = {**decision.inputs, "metrics_taken_at": taken}
    if floor_moved:
        inputs["reservations"] = [
            {"id": row.pk, "change": change} for row, change in changes if change != _UPDATED
        ]
        decision = _with_reason(decision, changes)
    return _decision_record(
        decision=decision,
        capacity_before=before,
        apply=changed or first or floor_moved,
        notice_due=notice_due,
        inputs=inputs,
        now=now,
        policy=policy,
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
        policy=policy,
    )


def _decision_record(
    *,
    decision: Decision,
    capacity_before: tuple[int, int, int],
    apply: bool,
    notice_due: bool,
    inputs: dict[str, Any],
    now: dt.datetime,
    policy: ScalingPolicy,
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
        min_asgi, min_workers = selectors.reserved_minimums(policy=policy)
        result = actuator.apply(
            Desired(
                decision.asgi_processes,
                decision.celery_workers,
                decision.connection_limit,
                min_asgi=min_asgi,
                min_workers=min_workers,
            )
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


# --- capacity reservations (ADR 0033) ------------------------------------------------------

_SLOT = dt.timedelta(minutes=15)
# A calendar cannot make more peaks than this in a day worth a reservation each; the
# bound keeps one evaluation's writes small whatever the forecast says.
MAX_RESERVATIONS = 24
# What happened to a reservation in one evaluation (the ``change`` of ``scaling.reserved``).
_PLANNED, _UPDATED, _ACTIVATED = "planned", "updated", "active"
_RELEASED, _CANCELLED, _WITHDRAWN = "released", "cancelled", "withdrawn"


@dataclass(frozen=True)
class PeakPlan:
    """A forecast peak worth reserving for: its busiest slot, what it needs, from when
    until when, and the weddings whose windows make it."""

    peak_at: dt.datetime
    connections: float
    asgi: int
    workers: int
    starts_at: dt.datetime
    ends_at: dt.datetime
    weddings: tuple[int, ...]


def _need(load: float, per_unit: float, headroom: float) -> int:
    return math.ceil(load * (1 + headroom) / per_unit) if load > 0 else 0


def reservation_peaks(
    predicted: Forecast, *, now: dt.datetime, policy: ScalingPolicy, lead: dt.timedelta
) -> list[PeakPlan]:
    """The peaks within ``notice_lead`` (24 h) that need more processes than the policy's
    minimum, one per group of overlapping wedding windows: a pure function of the forecast.

    The busiest slot not yet covered is a peak; its span is ``lead`` before it until the
    last window (``window_lead`` before the ceremony to the end of the timeline) of the
    weddings in their window at that slot ends; every slot inside those windows and in the
    run of busy slots around the peak is then covered (the ramp to the peak and the
    evening after it belong to it). What is reserved is the peak's processes and the most
    workers a slot of its windows needs, with the policy's headroom, within its bounds.
    """
    horizon = now + policy.notice_lead
    slots = [s for s in predicted.slots if s.start_utc + _SLOT > now and s.start_utc <= horizon]
    busy = [
        s
        for s in slots
        if _need(s.connections, policy.connections_per_process, policy.headroom) > policy.min_asgi
    ]
    # The runs of consecutive busy slots: a peak covers the whole run it is in (the ramp
    # before the windows open, a tail after they close), so a run has one reservation.
    run_of: dict[dt.datetime, tuple[dt.datetime, dt.datetime]] = {}
    run: list[dt.datetime] = []
    for at in sorted(s.start_utc for s in busy):
        if run and at - run[-1] > _SLOT:
            run_of.update((a, (run[0], run[-1] + _SLOT)) for a in run)
            run = []
        run.append(at)
    run_of.update((a, (run[0], run[-1] + _SLOT)) for a in run)
    busy.sort(key=lambda s: (-s.connections, s.start_utc))
    covered: list[tuple[dt.datetime, dt.datetime]] = []
    peaks: list[PeakPlan] = []
    for slot in busy:
        at = slot.start_utc
        if any(a <= at < b for a, b in covered) or len(peaks) >= MAX_RESERVATIONS:
            continue
        making = [
            w
            for w in predicted.weddings
            if w.ceremony_utc - policy.window_lead < at + _SLOT and at <= w.window_end_utc
        ]
        since = min([at, *(w.ceremony_utc - policy.window_lead for w in making)])
        until = max([at + _SLOT, *(w.window_end_utc for w in making)])
        inside = [s for s in slots if since <= s.start_utc < until]
        asgi = _need(slot.connections, policy.connections_per_process, policy.headroom)
        per_worker = policy.deliveries_per_worker
        workers = max(
            (_need(s.deliveries_per_s, per_worker, policy.headroom) for s in inside), default=0
        )
        covered.append((min(since, run_of[at][0]), max(until, run_of[at][1])))
        peaks.append(
            PeakPlan(
                peak_at=at,
                connections=slot.connections,
                asgi=min(policy.max_asgi, asgi),
                workers=min(policy.max_workers, max(policy.min_workers, workers)),
                starts_at=at - lead,
                ends_at=until,
                weddings=tuple(sorted(w.wedding_id for w in making if w.wedding_id)),
            )
        )
    return sorted(peaks, key=lambda p: p.peak_at)


def _matches(row: CapacityReservation, peak: PeakPlan) -> bool:
    """Whether a stored reservation is this peak's (moved): a wedding in common, or, for a
    peak of no known wedding, overlapping spans."""
    if set(row.weddings) & set(peak.weddings):
        return True
    return row.starts_at < peak.ends_at and peak.starts_at < row.ends_at


def capacity_reservations_sync(
    *, predicted: Forecast, now: dt.datetime, policy: ScalingPolicy, lead: dt.timedelta
) -> list[tuple[CapacityReservation, str]]:
    """Bring the reservations in line with the forecast at ``now``; called by each scaling
    evaluation before ``decide()``. Returns each reservation that changed with what
    happened to it (``planned``, ``updated``, ``active``, ``released``, ``cancelled``,
    ``withdrawn``: an active one cancelled), each also published as ``scaling.reserved``
    on ``ops`` after commit.

    A peak keeps its reservation while it moves (a wedding in common, else overlapping
    spans): a planned one follows the forecast; an active one is held (its processes and
    workers only rise, its end follows the windows) until its end, and is withdrawn only
    when no wedding window is left in it. A planned one whose peak left the forecast is
    cancelled. One comes into force at its start and is released at its end.
    """
    peaks = reservation_peaks(predicted, now=now, policy=policy, lead=lead)
    changes: list[tuple[CapacityReservation, str]] = []
    with transaction.atomic():
        rows = list(
            CapacityReservation.objects.select_for_update().filter(
                status__in=CapacityReservation.OPEN
            )
        )
        unmatched = list(peaks)
        for row in sorted(rows, key=lambda r: r.peak_at):
            if row.status == CapacityReservation.Status.ACTIVE and now >= row.ends_at:
                _close(row, CapacityReservation.Status.RELEASED, now, "its span ended")
                changes.append((row, _RELEASED))
                continue
            candidates = [p for p in unmatched if _matches(row, p)]
            peak = min(candidates, key=lambda p: abs(p.peak_at - row.peak_at), default=None)
            if peak is not None:
                unmatched.remove(peak)
                if _follow(row, peak, predicted, now):
                    changes.append((row, _UPDATED))
            elif row.status == CapacityReservation.Status.PLANNED:
                _close(row, CapacityReservation.Status.CANCELLED, now, "the peak left the forecast")
                changes.append((row, _CANCELLED))
                continue
            elif not any(
                w.ceremony_utc - policy.window_lead < row.ends_at and now <= w.window_end_utc
                for w in predicted.weddings
            ):
                _close(row, CapacityReservation.Status.CANCELLED, now, "no wedding is left in it")
                changes.append((row, _WITHDRAWN))
                continue
            if row.status == CapacityReservation.Status.PLANNED and row.starts_at <= now:
                _activate(row, now)
                changes.append((row, _ACTIVATED))
        for peak in unmatched:
            row = CapacityReservation.objects.create(
                peak_at=peak.peak_at,
                connections=peak.connections,
                asgi_processes=peak.asgi,
                celery_workers=peak.workers,
                starts_at=peak.starts_at,
                ends_at=peak.ends_at,
                made_at=now,
                updated_at=now,
                forecast_made_at=predicted.made_at,
                weddings=list(peak.weddings),
                reason=_plan_reason(peak),
            )
            changes.append((row, _PLANNED))
            if row.starts_at <= now:
                _activate(row, now)
                changes.append((row, _ACTIVATED))
        for row, change in changes:
            logger.info("scaling: reservation %s %s: %s", row.pk, change, row)
            event_publish_system("ops", "scaling.reserved", reservation_payload(row, change))
    return changes


def _plan_reason(peak: PeakPlan) -> str:
    return (
        f"forecast peak of {peak.connections:.0f} connections at {peak.peak_at:%a %d %b %H:%M}"
        f" UTC ({len(peak.weddings)} wedding(s)) needs {peak.asgi} process(es) and "
        f"{peak.workers} worker(s)"
    )


def _follow(
    row: CapacityReservation, peak: PeakPlan, predicted: Forecast, now: dt.datetime
) -> bool:
    """Move ``row`` to ``peak``; whether anything that matters changed (saved then)."""
    if row.status == CapacityReservation.Status.ACTIVE:
        # In force: hold what was reserved, follow a later end and a bigger need.
        want = {
            "asgi_processes": max(row.asgi_processes, peak.asgi),
            "celery_workers": max(row.celery_workers, peak.workers),
            "ends_at": max(row.ends_at, peak.ends_at),
        }
    else:
        want = {
            "peak_at": peak.peak_at,
            "asgi_processes": peak.asgi,
            "celery_workers": peak.workers,
            "starts_at": peak.starts_at,
            "ends_at": peak.ends_at,
        }
    # The weddings it is matched by: the peak's while planned, every one seen once active.
    if row.status == CapacityReservation.Status.ACTIVE:
        want["weddings"] = sorted(set(row.weddings) | set(peak.weddings))
    else:
        want["weddings"] = list(peak.weddings)
    moved = {k: v for k, v in want.items() if getattr(row, k) != v}
    if not moved:
        return False
    for field_name, value in moved.items():
        setattr(row, field_name, value)
    if row.status == CapacityReservation.Status.PLANNED:
        row.connections = peak.connections
        row.reason = _plan_reason(peak)
    row.forecast_made_at = predicted.made_at
    row.updated_at = now
    row.save()
    return True


def _activate(row: CapacityReservation, now: dt.datetime) -> None:
    row.status = CapacityReservation.Status.ACTIVE
    row.activated_at = row.updated_at = now
    row.save(update_fields=["status", "activated_at", "updated_at"])


def _close(row: CapacityReservation, status: str, now: dt.datetime, why: str) -> None:
    row.status = status
    row.closed_at = row.updated_at = now
    row.reason = f"{row.reason}; {status}: {why}" if row.reason else f"{status}: {why}"
    row.save(update_fields=["status", "closed_at", "updated_at", "reason"])


def _with_reason(decision: Decision, changes: list[tuple[CapacityReservation, str]]) -> Decision:
    """The decision with the reservations that came into force or ended named in its
    reasons (the audit row says why the actuator was called with the same capacity)."""
    said = [
        f"reservation #{row.pk} {change} (minimum {row.asgi_processes} process(es), "
        f"{row.celery_workers} worker(s))"
        for row, change in changes
        if change in (_ACTIVATED, _RELEASED, _WITHDRAWN)
    ]
    return replace(decision, reasons=(*decision.reasons, *said))
