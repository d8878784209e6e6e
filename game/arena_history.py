"""Where every arena player was at each of the last few steps: the memory behind lag compensation.

A ring of fixed size: one list of step times for the room, and one flat list per player (x, y, life at each
step) that the tick writes in place, so keeping the history allocates nothing per tick.
"""

from __future__ import annotations

import math

NOT_THERE = -1  # a player's life mark at a step where they were dead, away, or not yet recorded


class PositionHistory:
    """The times of the last `capacity` steps, and where to find a player's place in each.

    A player's trail (`new_trail`) holds three entries per step, at the offset `record` returns: x, y, and a
    life mark, their death count while alive (`NOT_THERE` otherwise). A hit on a rewound position counts only
    if the mark equals the target's death count now: someone killed or respawned since is not that body.
    """

    __slots__ = ("capacity", "count", "head", "times")

    def __init__(self, span_us: int, step_us: int) -> None:
        if span_us <= 0 or step_us <= 0:
            raise ValueError(f"a position history needs a positive span and step, not {span_us} and {step_us}")
        # Enough steps to look `span_us` back, and the one being looked back from.
        self.capacity = math.ceil(span_us / step_us) + 1
        self.times = [0] * self.capacity  # the match time (µs) of each kept step
        self.head = self.capacity - 1  # the slot of the newest step
        self.count = 0  # how many slots hold a step of this match

    def new_trail(self) -> list[float]:
        """A player's trail: no step recorded yet."""
        trail: list[float] = [0.0, 0.0, NOT_THERE] * self.capacity
        return trail

    def forget(self, trail: list[float]) -> None:
        """The player was not recorded for a while (away): what their trail holds is not where they were."""
        trail[2::3] = [NOT_THERE] * self.capacity

    def clear(self) -> None:
        """A new match, or a restored one: the past steps are not this timeline's."""
        self.count = 0

    def record(self, now_us: int) -> int:
        """A new step at match time `now_us`, replacing the oldest: the offset of its entries in every trail."""
        head = self.head + 1
        if head == self.capacity:
            head = 0
        self.head = head
        self.times[head] = now_us
        if self.count < self.capacity:
            self.count += 1
        return head * 3

    def since(self, seen_us: int) -> tuple[int, list[tuple[int, int]]]:
        """The step a client showing match time `seen_us` saw (the oldest kept one at or after it) and the
        steps after it up to the newest, oldest first, as (time, trail offset). No step kept: (-1, [])."""
        count = self.count
        if count == 0:
            return -1, []
        times = self.times
        capacity = self.capacity
        index = self.head
        back = 0
        while back + 1 < count:
            previous = index - 1 if index else capacity - 1
            if times[previous] < seen_us:
                break
            index = previous
            back += 1
        seen = times[index]
        after: list[tuple[int, int]] = []
        for _ in range(back):
            index = index + 1 if index + 1 < capacity else 0
            after.append((times[index], index * 3))
        return seen, after
