"""Per-room tick timing: lateness versus the absolute deadline and duration of each tick's work."""

from __future__ import annotations

from array import array
from collections.abc import Iterable

WINDOW = 1000


class RollingSamples:
    """The last `WINDOW` samples in a fixed ring; percentiles are computed only when asked."""

    __slots__ = ("_count", "_ring")

    def __init__(self) -> None:
        self._ring = array("d", bytes(8 * WINDOW))
        self._count = 0

    def add(self, value: float) -> None:
        self._ring[self._count % WINDOW] = value
        self._count += 1

    def values(self) -> list[float]:
        return list(self._ring[: min(self._count, WINDOW)])


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def summarize_ms(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(percentile(ordered, 50) * 1000, 3),
        "p99": round(percentile(ordered, 99) * 1000, 3),
        "max": round((ordered[-1] if ordered else 0.0) * 1000, 3),
    }


class TickStats:
    __slots__ = ("duration", "encodes", "late_resets", "lateness", "sent_bytes", "sent_messages", "skipped_sends",
                 "started_at", "ticks")

    def __init__(self, started_at: float) -> None:
        self.lateness = RollingSamples()
        self.duration = RollingSamples()
        self.ticks = 0
        self.encodes = 0
        self.skipped_sends = 0
        self.late_resets = 0
        self.sent_messages = 0  # what the room's broadcasts wrote (for the node's metrics)
        self.sent_bytes = 0
        self.started_at = started_at
