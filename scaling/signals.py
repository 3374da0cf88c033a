"""Signals scaling sends for whoever observes it (monitoring connects in its ready())."""

from django.dispatch import Signal

# A decision was applied by the actuator (or failed to be): sent with ``decision`` (the
# ScalingDecision row), ``failures_in_a_row`` (0 after a success) and ``message``.
decision_applied = Signal()
