"""The role matrix: who may do what on a wedding, written once (docs/security.md).

Four roles on one wedding, from the user's rows (``role_on_wedding``):

* ``staff``: ``is_staff`` users, on every wedding;
* ``planner``: a user of a supplier actively booked on the wedding that is a planner,
  or whose own membership of it has the coordinator role;
* ``vendor``: any other user of a supplier actively booked on the wedding;
* ``couple``: one of the wedding's couple, with no supplier booked on it.

A user who is several of these is the first in that order. Anyone else is nothing to
the wedding: every action is refused, exactly as for a wedding that does not exist.

``MATRIX`` names the roles each action allows. The server enforces it everywhere a
member can act or read (the catalogue's publish rules, acks, emergencies, the
subscription's view of the feed, replay, the HTTP history and snapshot, the page);
docs/security.md shows it (``matrix_markdown``; a test keeps the two equal), and
tests/realtime/test_auth_matrix.py tries every cell through the real interfaces.

The couple follow their day: the run sheet, the vendors' arrival, the wedding's
details. The vendors' coordination (messages, emergencies, who acknowledged what,
overdue-ack alerts, a status's free-text note) is not theirs to read, nor the vendors'
phone numbers (``read.contacts``), and they publish nothing (ADR 0016).

The guests (ADR 0026) are read by role and, for a vendor, by what its booked supplier
does: the couple, planners and staff read the whole list; the venue the seating (names
per table); the caterer the catering (diets counted per table, the dietary notes without
names); any other vendor nothing of them (``weddings.selectors.guest_view``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    COUPLE = "couple"
    VENDOR = "vendor"
    PLANNER = "planner"
    STAFF = "staff"


COUPLE, VENDOR, PLANNER, STAFF = Role.COUPLE, Role.VENDOR, Role.PLANNER, Role.STAFF
EVERYONE = frozenset(Role)
MEMBERS = frozenset({VENDOR, PLANNER, STAFF})  # the wedding's working members
EDITORS = frozenset({PLANNER, STAFF})
STAFF_ONLY = frozenset({STAFF})


@dataclass(frozen=True)
class Action:
    """One row of the matrix: what it allows, and to whom."""

    label: str  # the row as docs/security.md shows it
    roles: frozenset[Role]
    # A vendor has the row only as a user of a booked supplier of one of these
    # categories (``Supplier.Category`` values); empty: any vendor the roles allow.
    categories: frozenset[str] = frozenset()


# The events of a wedding topic the couple never read (``read.coordination``): they
# arrive as ``hidden`` placeholders (docs/protocol.md §6), so seqs stay contiguous.
COORDINATION_EVENTS = frozenset(
    {"message.posted", "emergency.raised", "emergency.resolved", "ack.updated",
     "alert.ack_overdue"}
)  # fmt: skip
# Payload fields of the other events that are coordination too.
COORDINATION_FIELDS = {"vendor.status": frozenset({"note"})}

# The vendors of these rows: the venue lays the tables, the caterer cooks for them.
VENUE, CATERER = frozenset({"venue"}), frozenset({"caterer"})

MATRIX: dict[str, Action] = {
    # Reading a wedding: live events, replay, the HTTP history and snapshot, the page.
    "subscribe": Action("Subscribe to `wedding:<id>`; read its snapshot and page", EVERYONE),
    "read.plan": Action(
        "Read the run sheet: `timeline.*`, `wedding.updated`, `vendor.status` (no note)",
        EVERYONE,
    ),
    "read.coordination": Action(
        "Read the coordination: `message.posted`, `emergency.*`, `ack.updated`,"
        " `alert.ack_overdue`, a status's `note`",
        MEMBERS,
    ),
    # Who to ring on the day is the working members' business: the couple booked the
    # vendors and hold their numbers already; calls on the day go through the planner.
    "read.contacts": Action(
        "Read the booked suppliers' phone numbers (the snapshot's `phone`, the page's contacts)",
        MEMBERS,
    ),
    "presence": Action("See who is present (`presence`, `presence_diff`)", EVERYONE),
    "ack": Action("Acknowledge an event (`ack`)", MEMBERS),
    # Publishing (PROTOCOL §5), one row per event of the catalogue.
    "publish.timeline.item.created": Action("Publish `timeline.item.created`", EDITORS),
    "publish.timeline.item.updated": Action("Publish `timeline.item.updated`", EDITORS),
    "publish.timeline.item.deleted": Action("Publish `timeline.item.deleted`", EDITORS),
    "publish.timeline.shifted": Action("Publish `timeline.shifted`", EDITORS),
    "publish.wedding.updated": Action("Publish `wedding.updated`", EDITORS),
    "publish.vendor.status": Action("Publish `vendor.status` of one's own supplier", MEMBERS),
    "status.any_supplier": Action("Publish `vendor.status` of any booked supplier", STAFF_ONLY),
    "publish.message.posted": Action("Publish `message.posted`", MEMBERS),
    "publish.emergency.raised": Action("Raise an emergency (`emergency.raised`)", MEMBERS),
    "publish.emergency.resolved": Action(
        "Resolve an emergency one raised (`emergency.resolved`)", MEMBERS
    ),
    "emergency.resolve_any": Action("Resolve anyone's emergency", EDITORS),
    # Beyond the wedding.
    "supplier_topic": Action(
        "Subscribe to `supplier:<id>` of one's own supplier (staff: any)", MEMBERS
    ),
    "ops_topic": Action("Subscribe to `ops`", STAFF_ONLY),
    "token.issue": Action("Get a realtime token (`POST /api/realtime/token`)", EVERYONE),
    "metrics.read": Action("Read the metrics API, `/metrics`, the dashboard", STAFF_ONLY),
    "operations": Action(
        "Set wedding-day mode, warm the cache, run a benchmark (with its permission)", STAFF_ONLY
    ),
    "admin": Action("Use the admin site", STAFF_ONLY),
    # The guests (ADR 0026), in the snapshot: each reader gets the parts its rows allow.
    "guests.list": Action(
        "Read the guest list: names, RSVP, dietary needs and notes, tables",
        frozenset({COUPLE, PLANNER, STAFF}),
    ),
    "guests.seating": Action(
        "Read the seating: each table's guests by name and their number", EVERYONE, VENUE
    ),
    "guests.catering": Action(
        "Read the catering: each table's diets counted and its dietary notes, no names",
        EVERYONE,
        CATERER,
    ),
}


def allows(action: str, role: Role | None, categories: Iterable[str] = ()) -> bool:
    """Whether ``role`` may do ``action``; nobody (None) may do anything. A vendor's
    ``categories`` are those of its suppliers booked on the wedding (the ``guests.*`` rows
    name the ones they allow)."""
    if role is None or role not in MATRIX[action].roles:
        return False
    wanted = MATRIX[action].categories
    return role is not VENDOR or not wanted or not wanted.isdisjoint(categories)


def may(action: str, *, staff: bool, acting: bool, editor: Callable[[], bool]) -> bool:
    """``allows`` for a user known by what is cheap to know: whether they are staff and
    whether a supplier of theirs is booked on the wedding (``acting``); a member of the
    wedding either way. ``editor`` (a query: planner or coordinator?) is called only when
    the action tells the vendor and the planner apart. Not for the rows with
    ``categories`` (the guests): those need the vendor's categories (``allows``)."""
    roles = MATRIX[action].roles
    if staff:
        return STAFF in roles
    if not acting:
        return COUPLE in roles
    vendor, planner = VENDOR in roles, PLANNER in roles
    if vendor == planner:
        return vendor
    return planner == editor()


def role_on_wedding(*, staff: bool, acting: bool, editor: bool, couple: bool) -> Role | None:
    """The one role of a user on a wedding, from what they are to it."""
    if staff:
        return STAFF
    if acting:
        return PLANNER if editor else VENDOR
    return COUPLE if couple else None


def redacted_payload(event: str, payload: dict) -> dict:
    """What a reader without ``read.coordination`` sees of a ``read.plan`` payload."""
    hidden = COORDINATION_FIELDS.get(event)
    if not hidden or not hidden & payload.keys():
        return payload
    return {key: value for key, value in payload.items() if key not in hidden}


def _cell(action: Action, role: Role) -> str:
    if role not in action.roles:
        return "—"
    if role is VENDOR and action.categories:
        return " or ".join(sorted(action.categories)) + " only"
    return "yes"


def matrix_markdown() -> str:
    """The matrix as docs/security.md shows it."""
    header = "| action | " + " | ".join(role.value for role in Role) + " |"
    lines = [header, "|---|" + "---|" * len(Role)]
    for action in MATRIX.values():
        cells = " | ".join(_cell(action, role) for role in Role)
        lines.append(f"| {action.label} | {cells} |")
    return "\n".join(lines)
