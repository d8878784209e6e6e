"""The lobby connection's phase table: the legal transitions, and a named error for every other one."""

from __future__ import annotations

import itertools

import pytest

from server.cluster.lobby_session import LOBBY_TRANSITIONS, IllegalLobbyTransition, LobbyPhase, check_lobby_transition

LEGAL = {
    (LobbyPhase.CONNECTED, LobbyPhase.JOINING), (LobbyPhase.CONNECTED, LobbyPhase.CLOSED),
    (LobbyPhase.JOINING, LobbyPhase.CONNECTED), (LobbyPhase.JOINING, LobbyPhase.WAITING),
    (LobbyPhase.JOINING, LobbyPhase.MATCHED), (LobbyPhase.JOINING, LobbyPhase.CLOSED),
    (LobbyPhase.WAITING, LobbyPhase.CONNECTED), (LobbyPhase.WAITING, LobbyPhase.MATCHED),
    (LobbyPhase.WAITING, LobbyPhase.CLOSED), (LobbyPhase.MATCHED, LobbyPhase.CLOSED),
}


def test_the_table_allows_exactly_the_documented_transitions() -> None:
    assert {(a, b) for a, targets in LOBBY_TRANSITIONS.items() for b in targets} == LEGAL


@pytest.mark.parametrize(("current", "new"), sorted(set(itertools.product(LobbyPhase, LobbyPhase)) - LEGAL))
def test_any_other_transition_is_named_as_illegal(current: LobbyPhase, new: LobbyPhase) -> None:
    with pytest.raises(IllegalLobbyTransition) as info:
        check_lobby_transition(current, new)
    assert current.value in str(info.value) and new.value in str(info.value)


def test_a_matched_player_cannot_go_back_to_waiting() -> None:
    assert check_lobby_transition(LobbyPhase.MATCHED, LobbyPhase.CLOSED) is LobbyPhase.CLOSED
    with pytest.raises(IllegalLobbyTransition):
        check_lobby_transition(LobbyPhase.MATCHED, LobbyPhase.WAITING)
