"""The scaling backtest: a synthetic wedding calendar and its load, replayed day by day
through the demand model and ``decide()``, against seasonal-naive and reactive-only.

Called by ``python manage.py scaling_backtest`` (docs/benchmarks.md has the figures).
Pure: no database, no clock; everything comes from a seeded ``random.Random``. Plain
Python lists (numpy is not a dependency). The model's parts are production's own
(``scaling.demand``: ``wedding_connections``, the correction's sums and shrinkage,
``slot_forecast``; ``scaling.decisions.decide``); nothing of them is copied here.

``history`` synthesises the calendar and its truth, ``model`` runs the demand model
over it, ``replaying`` replays it through ``decide()`` and ``scoring`` makes the figures.
"""

from .history import (
    SLOTS_PER_DAY,
    WEEK_SLOTS,
    History,
    SyntheticWedding,
    calendar_shares,
    profile_share,
    synthetic_history,
    wedding_calendar,
    wedding_profile,
)
from .model import RollingCorrection, model_expected
from .replaying import replay
from .scoring import capacity_cost, mape

__all__ = [
    "SLOTS_PER_DAY",
    "WEEK_SLOTS",
    "History",
    "RollingCorrection",
    "SyntheticWedding",
    "calendar_shares",
    "capacity_cost",
    "mape",
    "model_expected",
    "profile_share",
    "replay",
    "synthetic_history",
    "wedding_calendar",
    "wedding_profile",
]
