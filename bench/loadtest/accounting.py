"""Delivery accounting of the load benchmark: seq continuity, loss, latency percentiles.

Pure and Django-free. A receiver keeps one ``Stream`` per subscribed topic and feeds it
every event frame exactly as the server sent it (the project's client would hide
duplicates and reorder held events; the benchmark must see them). At the end of a
measurement window each stream is folded into ``DeliveryTotals`` against the topic's
final seq; totals of many receivers and processes merge.

Definitions (per receiver and topic):

* expected: the seqs after the window's start up to the topic's final seq;
* missing (loss): expected seqs never received;
* duplicate: a seq received again (or one at or below the subscribe position);
* out of order: a new seq that arrived after a higher one had;
* gap: an arrival that skipped at least one seq (it may be filled later: out of order).

Latency is end to end: receive time minus the send time the publisher wrote into the
payload (``publish_text``, in one of ``STAMPED_FIELDS``), both wall-clock nanoseconds on
one host.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any

# message.posted accepts only {"text"} (realtime/catalogue.py), so the send time rides
# in the text: "loadtest <time_ns> <tag>".
TEXT_PREFIX = "loadtest "


def publish_text(sent_ns: int, tag: str) -> str:
    """The text of a benchmark publish carrying its send time (wall clock, ns)."""
    return f"{TEXT_PREFIX}{sent_ns} {tag}"


def sent_at_ns(text: Any) -> int | None:
    """The send time written by ``publish_text``, or None for any other text."""
    if not isinstance(text, str) or not text.startswith(TEXT_PREFIX):
        return None
    stamp = text[len(TEXT_PREFIX) :].split(" ", 1)[0]
    return int(stamp) if stamp.isdigit() else None


# The payload fields a benchmark publish may carry its send time in: message.posted's
# text, vendor.status's note and a timeline item's location (hostile-member's planner
# publishes all three). Only top-level fields: a shift's moved items carry old locations.
STAMPED_FIELDS = ("text", "note", "location")


def payload_sent_at_ns(payload: Any) -> int | None:
    """The send time of a benchmark publish from its payload (``STAMPED_FIELDS``)."""
    if not isinstance(payload, dict):
        return None
    for name in STAMPED_FIELDS:
        value = payload.get(name)
        if value is not None:
            return sent_at_ns(value)
    return None


class Latencies:
    """Latency samples in milliseconds, kept exactly (8 bytes each) so percentiles are
    exact and samples of many processes merge."""

    __slots__ = ("samples",)

    def __init__(self, samples: array | None = None) -> None:
        self.samples = samples if samples is not None else array("d")

    def add(self, ms: float) -> None:
        self.samples.append(ms)

    def extend(self, other: Latencies) -> None:
        self.samples.extend(other.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def percentile(self, q: float, ordered: list[float] | None = None) -> float | None:
        """Nearest-rank percentile (q in [0, 100]); None without samples."""
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be between 0 and 100, not {q}")
        values = ordered if ordered is not None else sorted(self.samples)
        if not values:
            return None
        rank = max(1, math.ceil(q / 100 * len(values)))
        return values[rank - 1]

    def summary(self) -> dict[str, float | int | None]:
        """count, p50, p95, p99, max and mean, in ms (rounded to µs)."""
        ordered = sorted(self.samples)

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "count": len(ordered),
            "p50_ms": ms(self.percentile(50, ordered)),
            "p95_ms": ms(self.percentile(95, ordered)),
            "p99_ms": ms(self.percentile(99, ordered)),
            "max_ms": ms(ordered[-1] if ordered else None),
            "mean_ms": ms(sum(ordered) / len(ordered) if ordered else None),
        }


class Stream:
    """One receiver's view of one topic: what it has seen over the whole run, and the
    counters of the current measurement window."""

    __slots__ = (
        "ahead",
        "contig",
        "duplicates",
        "gaps",
        "high",
        "out_of_order",
        "received",
        "topic",
        "window_start",
    )

    def __init__(self, topic: str, start: int) -> None:
        self.topic = topic
        self.contig = start  # every seq up to this one has been seen
        self.high = start  # the highest seq seen
        self.ahead: set[int] = set()  # seen seqs beyond contig + 1 (after a gap)
        self.window_start = start
        self.received = self.duplicates = self.out_of_order = self.gaps = 0

    def on_event(self, seq: int) -> bool:
        """Account one arrival; True when it is new (a duplicate returns False)."""
        if seq <= self.contig or seq in self.ahead:
            self.duplicates += 1
            return False
        self.received += 1
        if seq < self.high:
            self.out_of_order += 1
        elif seq > self.high + 1:
            self.gaps += 1
        if seq > self.high:
            self.high = seq
        if seq == self.contig + 1:
            self.contig = seq
            ahead = self.ahead
            while ahead and self.contig + 1 in ahead:
                self.contig += 1
                ahead.discard(self.contig)
        else:
            self.ahead.add(seq)
        return True

    def start_window(self, start: int) -> None:
        """Begin a new window: seqs after ``start`` are what it expects."""
        self.window_start = start
        self.received = self.duplicates = self.out_of_order = self.gaps = 0

    def missing(self, final: int) -> int:
        """Seqs of the window (``window_start`` < seq <= ``final``) never received."""
        start = self.window_start
        if final <= start:
            return 0
        seen = max(0, min(self.contig, final) - start)
        seen += sum(1 for s in self.ahead if start < s <= final)
        return (final - start) - seen

    def complete(self, final: int) -> bool:
        """True when every seq up to ``final`` has been seen."""
        return self.contig >= final


@dataclass
class DeliveryTotals:
    """The deliveries of a window, summed over streams, receivers and processes."""

    streams: int = 0
    expected: int = 0
    received: int = 0
    missing: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    gaps: int = 0
    incomplete_streams: int = 0
    latencies: Latencies = field(default_factory=Latencies)

    def add_stream(self, stream: Stream, final: int) -> None:
        """Fold one stream in, against its topic's final seq."""
        self.streams += 1
        self.expected += max(0, final - stream.window_start)
        self.received += stream.received
        missing = stream.missing(final)
        self.missing += missing
        self.incomplete_streams += missing > 0
        self.duplicates += stream.duplicates
        self.out_of_order += stream.out_of_order
        self.gaps += stream.gaps

    def merge(self, other: DeliveryTotals) -> None:
        for name in (
            "streams", "expected", "received", "missing", "duplicates", "out_of_order",
            "gaps", "incomplete_streams",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latencies.extend(other.latencies)

    @property
    def loss(self) -> float:
        """The share of expected deliveries never received (0.0 with none expected)."""
        return self.missing / self.expected if self.expected else 0.0

    @property
    def clean(self) -> bool:
        """No loss, no duplicate and nothing out of order."""
        return not (self.missing or self.duplicates or self.out_of_order)

    def as_dict(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "expected": self.expected,
            "received": self.received,
            "missing": self.missing,
            "loss": round(self.loss, 6),
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "gaps": self.gaps,
            "incomplete_streams": self.incomplete_streams,
            "latency": self.latencies.summary(),
        }
