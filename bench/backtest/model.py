"""The demand model run over a whole history, fast: the calendar's expectation of every
slot at once, and ``learn_correction``'s ratios over a sliding window of days.

Both are the production code's own parts (``scaling.demand``) arranged for a two-year
replay: ``expected_connections`` summed wedding by wedding over the slots each one
spans, and the correction's sums kept up to date slot by slot instead of recomputed
from the whole window every day.
"""

from __future__ import annotations

from collections import defaultdict

from scaling.demand import (
    Correction,
    DemandParams,
    add_to_sums,
    correction_from_sums,
    empty_sums,
)

from .history import History, add_wedding


def model_expected(history: History, params: DemandParams) -> list[float]:
    """The calendar's uncorrected connections per slot (``expected_connections`` at mid-slot)."""
    series = [params.baseline_connections] * history.slots
    for plan in history.plans:
        add_wedding(series, history.start, plan, params)
    return series


class RollingCorrection:
    """``learn_correction`` over a sliding window of days, kept up to date incrementally:
    the same per hour-of-week sums (one observation per slot) and the same ratios."""

    def __init__(self, params: DemandParams) -> None:
        self.params = params
        self.sums: dict[int, list[float]] = defaultdict(empty_sums)

    def update(
        self, how: int, observed: float, expected: float, obs_d: float, sign: int = 1
    ) -> None:
        """Add (sign 1) or remove (sign -1) one slot's observation."""
        add_to_sums(self.sums[how], observed, expected, obs_d, self.params, sign)

    def correction(self) -> Correction:
        """The ratios as ``learn_correction`` would return them for the window."""
        return correction_from_sums(self.sums, self.params)
