"""The room runner: one per room. A fixed-tick room ticks at its period against absolute deadlines, from the
node's one ticker (server/rooms/ticker.py); an event-driven room's task sleeps until a message, a change or a
timer it asked for wakes it (an idle one costs nothing).

Deadlines advance by exactly one period per tick, so the rate does not drift; a tick that starts late is
measured (lateness), and the room is due again at once until it has caught up, one tick per batch of the
ticker. A room that falls hopelessly behind skips ahead instead. An exception in the room's game closes that
room only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import NamedTuple

from server.net.broadcast import send_frames
from server.net.protocol import CloseCode
from server.ops.metrics import NodeMetrics
from server.rooms.lifecycle import RoomPhase
from server.rooms.loadgauge import LoadGauge, LoadLimits
from server.rooms.room import Room
from server.rooms.ticker import Ticker

# Beyond this many periods behind, stop catching up and start again from now.
MAX_BEHIND_TICKS = 10


RESULT_WAIT_S = 10.0
SPIN_GUARD_S = 0.005  # an event-driven room whose wake time stays in the past is stepped this often, no more


def _nothing() -> None:
    return None


class Closing(NamedTuple):
    """How a room's connections are closed: the close code and reason, after these frames."""

    code: CloseCode
    reason: str
    last_frames: bytes | None = None


class RoomRunner:
    def __init__(self, room: Room, logger: logging.Logger, clock: Callable[[], float], ticker: Ticker,
                 on_finished: Callable[[Room], None] | None = None, metrics: NodeMetrics | None = None,
                 load: LoadGauge | None = None) -> None:
        self.room = room
        self.ticker = ticker
        self.load = load or LoadGauge(LoadLimits())  # counts the ticks, and the late ones
        self.deadline = 0.0  # a fixed-tick room's next tick (the ticker's)
        self.ticking = False  # in the ticker
        self._closing: asyncio.Future[Closing] | None = None
        self.metrics = metrics or NodeMetrics()
        # Called once when the match ends, before the room lingers (the lobby frees its players then).
        self.on_finished = on_finished
        self.log = logger
        self.interval = room.hosted.interval_s or 0.0
        # A fine-grained clock: uvloop's loop.time() moves in whole milliseconds.
        self.clock = clock
        self._counted_start = room.started_ms is not None  # a restored match started elsewhere
        self._spin_told = False

    async def run(self) -> None:
        if self.room.event_driven:
            await self._run_on_events()
        else:
            await self._run_ticks()

    async def _run_on_events(self) -> None:
        """Step the room when poked (a message, a join or leave, a result saved) or when its next timer is
        due, never more than once per loop iteration however many pokes arrived meanwhile."""
        room = self.room
        clock = self.clock
        wake = asyncio.Event()
        room.poke = wake.set
        try:
            while True:
                wake.clear()
                started = clock()
                finished = self._step(started)
                if finished is None:
                    await self._close_all(*self._crashed())
                    return
                try:
                    closing = self._ending(finished)
                    due = None if closing is not None else room.next_wake()
                except Exception:  # the game's timer (or the end of its match) failed: this room closes
                    self.log.exception("room %s failed after step %d; closing it", room.room_id, room.tick_no)
                    closing = self._crashed()
                if closing is not None:
                    await self._close_all(*closing)
                    return
                if wake.is_set():
                    await asyncio.sleep(0)  # other rooms first; pokes that arrived meanwhile share one step
                    continue
                delay = None if due is None else due - clock()
                if due is not None and not due > started:
                    # A wake time the step just taken did not move on (a game whose timer stays in the past):
                    # waking at once would spin; wait a little, and say so once.
                    delay = SPIN_GUARD_S
                    if not self._spin_told:
                        self._spin_told = True
                        self.log.warning("room %s asks to be stepped at a time already past; stepping it every "
                                         "%.0f ms until it moves on", room.room_id, SPIN_GUARD_S * 1000)
                try:
                    async with asyncio.timeout(None if delay is None else max(0.0, delay)):
                        await wake.wait()
                except TimeoutError:
                    pass
        finally:
            room.poke = _nothing
            room.close()

    def _step(self, started: float) -> float | None:
        """Tick (or step) the room once and measure it: when it ended, or None if the game raised (the room
        closes then; the other rooms go on)."""
        room = self.room
        try:
            room.tick(started)
        except Exception:
            self.log.exception("room %s crashed in step %d; closing it", room.room_id, room.tick_no)
            return None
        finished = self.clock()
        room.stats.duration.add(finished - started)
        self.metrics.tick_duration.observe(finished - started)
        if not self._counted_start and room.started_ms is not None:
            self._counted_start = True
            self.metrics.matches_started += 1
        return finished

    def _ending(self, finished: float) -> Closing | None:
        """After a step: how the room closes if its match is over and has lingered, or it was evicted, cancelled
        or abandoned (None: it goes on)."""
        room = self.room
        if room.phase is RoomPhase.FINISHED and room.finished_at is not None:
            if self.on_finished is not None:
                on_finished, self.on_finished = self.on_finished, None
                on_finished(room)
            # The result on screen for `linger`, and longer (up to RESULT_WAIT_S more) until it is durable, so
            # that players are told it is saved (`result_saved`).
            lingered = finished - room.finished_at
            if lingered >= room.settings.end_linger_s and (room.result_saved or
                                                           lingered >= room.settings.end_linger_s + RESULT_WAIT_S):
                return Closing(CloseCode.NORMAL, "match over")
        elif room.evicted:
            return Closing(CloseCode.GOING_AWAY, "room taken over", room.evicted_frames())
        elif room.cancelled:
            self.log.info("room %s cancelled: too few matched players arrived", room.room_id)
            return Closing(CloseCode.NORMAL, "match cancelled", room.cancel_frames())
        elif room.abandoned(finished):
            self.log.info("room %s abandoned in phase %s; closing it", room.room_id, room.phase.value)
            return Closing(CloseCode.NORMAL, "room closed")  # its spectators, if any
        return None

    def _crashed(self) -> Closing:
        return Closing(CloseCode.INTERNAL, "room crashed",
                       self.room.crash_frames("the room's game failed; the room is closed"))

    async def _run_ticks(self) -> None:
        """In the node's ticker (server/rooms/ticker.py) until the room closes."""
        ticker = self.ticker
        self._closing = ticker.loop.create_future()
        self.deadline = self.clock()
        ticker.add(self)
        try:
            closing = await self._closing
            await self._close_all(closing.code, closing.reason, closing.last_frames)
        finally:
            ticker.remove(self)
            self.room.close()

    def tick_due(self) -> None:
        """The ticker's call: tick once, measured against the deadline; then the next deadline, or leave the
        ticker with how the room closes."""
        room = self.room
        clock = self.clock
        interval = self.interval
        deadline = self.deadline
        started = clock()
        late = started - deadline
        room.stats.lateness.add(late)
        # uvloop may wake a little early: a negative lateness would make the histogram's sum fall.
        self.metrics.tick_lateness.observe(late if late > 0 else 0.0)
        load = self.load
        load.ticks += 1
        if late > load.late_after_s:
            load.late += 1
        finished = self._step(started)
        if finished is None:
            self._leave(self._crashed())
            return
        if room.phase is RoomPhase.FINISHED or room.evicted or room.cancelled or room.abandoned(finished):
            try:
                closing = self._ending(finished)
            except Exception:  # the end of its match failed: this room closes, the others tick on
                self.log.exception("room %s failed after tick %d; closing it", room.room_id, room.tick_no)
                closing = self._crashed()
            if closing is not None:
                self._leave(closing)
                return
        deadline += interval
        if finished - deadline > MAX_BEHIND_TICKS * interval:
            room.stats.late_resets += 1
            deadline = finished
        self.deadline = deadline

    def tick_failed(self) -> None:
        self._leave(self._crashed())

    def _leave(self, closing: Closing) -> None:
        self.ticker.remove(self)
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(closing)

    async def _close_all(self, code: CloseCode, reason: str, last_frames: bytes | None = None) -> None:
        connections = self.room.connections()
        if last_frames is not None:
            for conn in connections:
                send_frames(conn, last_frames)
        self.room.close()
        for conn in connections:
            conn.close(code, reason)
        # Each ends when its client answers, or at the close timeout (the listener's sweep).
        await asyncio.gather(*(conn.wait_closed() for conn in connections))
