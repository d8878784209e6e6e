"""One timer for every fixed-tick room of a node: a heap of deadlines, and one event-loop timer set for the
earliest. When it fires, every room due by then ticks, the latest first, in one callback.

A task per room costs a task step, a sleep future and a timer handle per tick; at 66 Hz and a hundred rooms
that is most of what is not the game or the kernel (docs/benchmarks.md). A batch that runs past its time
budget hands the rest back to the loop (its I/O goes first); a room that has fallen behind catches up within that
budget, and the rest of its backlog waits for the next batches.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Protocol

# uvloop's timers have a 1 ms grain: a room due within this much of now ticks in this batch rather than a
# timer of its own a fraction of a millisecond later.
EARLY_S = 0.0005
# A batch that has ticked for this long lets the loop read and write before the rest of what is due.
BATCH_BUDGET_S = 0.002

log = logging.getLogger("tickroom.ticker")


class Ticked(Protocol):
    """A fixed-tick room's runner, as the ticker sees it."""

    deadline: float  # when it is next due (the node's clock)
    ticking: bool  # False once it left the ticker

    def tick_due(self) -> None:
        """Tick once; move `deadline` on, or leave the ticker (`Ticker.remove`)."""

    def tick_failed(self) -> None:
        """`tick_due` raised (a bug outside the game, whose failures the runner handles): the room closes."""


class Ticker:
    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float],
                 budget_s: float = BATCH_BUDGET_S) -> None:
        self.loop = loop
        self.clock = clock
        self.budget_s = budget_s
        self._heap: list[tuple[float, int, Ticked]] = []
        self._order = itertools.count()  # ties broken by arrival, never by comparing rooms
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._timer_at = 0.0
        self.rooms = 0  # rooms in the ticker
        self.batches = 0  # timer callbacks that ticked at least one room
        self.yielded = 0  # batches cut by the time budget

    def add(self, room: Ticked) -> None:
        room.ticking = True
        self.rooms += 1
        heapq.heappush(self._heap, (room.deadline, next(self._order), room))
        self._arm()

    def remove(self, room: Ticked) -> None:
        """The room leaves at once; its stale heap entry is dropped when it comes up."""
        if room.ticking:
            room.ticking = False
            self.rooms -= 1

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()

    def _arm(self) -> None:
        heap = self._heap
        while heap and not heap[0][2].ticking:
            heapq.heappop(heap)
        if not heap:
            return
        due = heap[0][0]
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        self._timer_at = due
        delay = due - self.clock()
        self._timer = self.loop.call_later(delay, self._fire) if delay > 0 else self.loop.call_soon(self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        clock = self.clock
        now = clock()
        horizon = now + EARLY_S
        due: list[Ticked] = []
        while heap and heap[0][0] <= horizon:
            room = heapq.heappop(heap)[2]
            if room.ticking:
                due.append(room)
        if due:
            self.batches += 1
        push = heapq.heappush
        order = self._order
        stop_at = now + self.budget_s
        for index, room in enumerate(due):
            if not room.ticking:  # removed by a room ticked before it in this batch
                continue
            try:
                room.tick_due()
                # Still behind (a stall): catch up now, within the batch's budget, rather than a tick a loop turn.
                while room.ticking and room.deadline <= horizon and clock() <= stop_at:
                    room.tick_due()
            except Exception:  # one room's failure never stops the others' ticks
                log.exception("a room's tick failed; closing it")
                self.remove(room)
                room.tick_failed()
            if room.ticking:
                push(heap, (room.deadline, next(order), room))
            if clock() > stop_at and index + 1 < len(due):
                self.yielded += 1
                for later in due[index + 1:]:
                    if later.ticking:
                        push(heap, (later.deadline, next(order), later))
                break
        self._arm()
