"""A room's lifecycle written down as a table: which phase may follow which, and nothing else."""

from __future__ import annotations

import enum


class RoomPhase(enum.StrEnum):
    WAITING = "waiting"
    COUNTDOWN = "countdown"
    RUNNING = "running"
    FINISHED = "finished"
    CLOSED = "closed"


class IllegalTransition(RuntimeError):
    def __init__(self, current: RoomPhase, new: RoomPhase) -> None:
        super().__init__(f"a room cannot go from {current.value} to {new.value}")
        self.current = current
        self.new = new


# `closed` is reachable from everywhere: an emptied room, or a room whose game failed.
TRANSITIONS: dict[RoomPhase, frozenset[RoomPhase]] = {
    RoomPhase.WAITING: frozenset({RoomPhase.COUNTDOWN, RoomPhase.RUNNING, RoomPhase.CLOSED}),
    RoomPhase.COUNTDOWN: frozenset({RoomPhase.WAITING, RoomPhase.RUNNING, RoomPhase.CLOSED}),
    RoomPhase.RUNNING: frozenset({RoomPhase.FINISHED, RoomPhase.CLOSED}),
    RoomPhase.FINISHED: frozenset({RoomPhase.CLOSED}),
    RoomPhase.CLOSED: frozenset(),
}


def check_transition(current: RoomPhase, new: RoomPhase) -> RoomPhase:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(current, new)
    return new
