"""Where a subscribing connection starts each topic, and the events it missed (PROTOCOL §4).

One call in a database thread per subscribe frame, whatever the number of topics: for
each topic its current seq and, with ``since``, the first page of missed events, already
encoded. Reconnect storms multiply whatever a subscribe costs, so the page comes with
the position (two statements a topic) instead of in a second thread hop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import selectors
from .broadcast import event_frame_text
from .db import in_db_thread
from .delivery import PAGE


@dataclass(slots=True)
class Sync:
    """Where a connection starts one topic."""

    seq: int  # the topic's seq now (what the reply says)
    recovered: bool  # every event after ``since`` is still stored (True without since)
    start: int  # the seq delivery resumes after: ``since`` when recovered, else ``seq``
    # The first missed events (seq, frame text), at most PAGE; more are read page by
    # page when the topic has more than that after ``start``.
    events: list[tuple[int, str]] = field(default_factory=list)


def _sync_topics(since: dict[str, int | None]) -> dict[str, Sync]:
    """Per topic: its seq and, with ``since`` inside the retained history, the first
    page of the events ``since+1 … seq``.

    Outside the retained history (pruned, or a ``since`` beyond the topic's seq)
    ``recovered`` is False and delivery resumes after ``seq``: the client reloads the
    snapshot (PROTOCOL §4).
    """
    out: dict[str, Sync] = {}
    for topic, after in since.items():
        seq = selectors.topic_seq(topic)
        if after is None or after >= seq:
            out[topic] = Sync(seq, after is None or after == seq, seq)
            continue
        events = [e for e in selectors.events_since(topic, after, limit=PAGE) if e.seq <= seq]
        # Events are only ever removed from the old end: the history covers `after`
        # exactly when its first event is the next one.
        if not events or events[0].seq != after + 1:
            out[topic] = Sync(seq, False, seq)
            continue
        out[topic] = Sync(seq, True, after, [(e.seq, event_frame_text(e)) for e in events])
    return out


sync_topics = in_db_thread(_sync_topics)
