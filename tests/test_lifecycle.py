"""The room lifecycle table: the legal transitions, and a named error for every other one."""

from __future__ import annotations

import itertools

import pytest

from server.rooms.lifecycle import TRANSITIONS, IllegalTransition, RoomPhase, check_transition

LEGAL = {
    (RoomPhase.WAITING, RoomPhase.COUNTDOWN), (RoomPhase.WAITING, RoomPhase.RUNNING),
    (RoomPhase.WAITING, RoomPhase.CLOSED), (RoomPhase.COUNTDOWN, RoomPhase.WAITING),
    (RoomPhase.COUNTDOWN, RoomPhase.RUNNING), (RoomPhase.COUNTDOWN, RoomPhase.CLOSED),
    (RoomPhase.RUNNING, RoomPhase.FINISHED), (RoomPhase.RUNNING, RoomPhase.CLOSED),
    (RoomPhase.FINISHED, RoomPhase.CLOSED),
}


def test_the_table_allows_exactly_the_documented_transitions() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL


@pytest.mark.parametrize(("current", "new"), sorted(set(itertools.product(RoomPhase, RoomPhase)) - LEGAL))
def test_any_other_transition_is_an_illegal_transition(current: RoomPhase, new: RoomPhase) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(current, new)
    assert (info.value.current, info.value.new) == (current, new)
    assert current.value in str(info.value) and new.value in str(info.value)


def test_a_closed_room_goes_nowhere_and_a_finished_match_never_restarts() -> None:
    assert TRANSITIONS[RoomPhase.CLOSED] == frozenset()
    with pytest.raises(IllegalTransition):
        check_transition(RoomPhase.FINISHED, RoomPhase.RUNNING)
    assert check_transition(RoomPhase.FINISHED, RoomPhase.CLOSED) is RoomPhase.CLOSED
