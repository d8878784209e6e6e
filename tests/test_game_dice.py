"""The dice game, driven directly: rounds and roll-offs, lives, deadlines, leaving, results, snapshots, schemas and
a whole match played by its bots through JSON."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from game.api import EVENT_DRIVEN, Forming, Game, GameContext, Refused, message_type
from game.dice import DEFINITION, DiceBot, DiceOptions, Roll

START_MS = 1_000
ROLL_TIME_MS = DiceOptions().roll_time_ms


class ScriptedDice(random.Random):
    """An RNG whose dice show the given values, in order."""

    def __init__(self, values: list[int]) -> None:
        super().__init__(0)
        self.values = list(values)

    def randint(self, a: int, b: int) -> int:
        return self.values.pop(0)


def new_game(players: int = 3, *, dice: list[int] | None = None, seed: int = 1, time_limit_ms: int = 0,
             options: DiceOptions | None = None, start: bool = True) -> Game:
    rng = ScriptedDice(dice) if dice is not None else random.Random(seed)
    game = DEFINITION.make(GameContext(rng, time_limit_ms, options))
    for pid in range(1, players + 1):
        game.join(pid, f"p{pid}", 0)
    if start:
        game.start(START_MS)
    return game


def roll(game: Game, pid: int, now_ms: int = START_MS + 100) -> None:
    game.handle(pid, Roll(), now_ms)


def bodies(game: Game, kind: str | None = None) -> list[dict[str, Any]]:
    return [event.body for event in game.drain_events() if kind is None or event.body["kind"] == kind]


def current(game: Game) -> dict[str, Any]:
    state = game.state()
    assert state is not None
    return state


def lives(state: dict[str, Any]) -> dict[int, int]:
    return {entry["p"]: entry["lives"] for entry in state["players"]}


# -- the definition ------------------------------------------------------------------------------------

def test_the_definition_declares_an_event_driven_countdown_game_for_two_to_six() -> None:
    assert DEFINITION.mode == "dice"
    assert DEFINITION.title == "Dice: lowest roll loses"
    assert (DEFINITION.seats.min, DEFINITION.seats.max) == (2, 6)
    assert DEFINITION.forming is Forming.COUNTDOWN
    assert DEFINITION.clock is EVENT_DRIVEN
    assert [message_type(cls) for cls in DEFINITION.messages] == ["roll"]
    assert tuple(DEFINITION.figures) == ("rounds_lost", "rolls")
    assert DEFINITION.options is DiceOptions
    assert DEFINITION.bot is not None


def test_welcome_tells_the_options() -> None:
    game = new_game(options=DiceOptions(lives=2, sides=20, roll_time_ms=5000))
    state = current(game)
    welcome = game.welcome(1)
    assert welcome == {"lives": 2, "sides": 20, "roll_time_ms": 5000, "view": state}
    assert game.state() is None  # the welcome does not use the state up
    assert new_game().welcome(2)["roll_time_ms"] == 15000


# -- rounds --------------------------------------------------------------------------------------------

def test_every_player_still_in_must_roll_once_and_the_lowest_loses_the_round() -> None:
    game = new_game(dice=[2, 4, 5])
    state = current(game)
    assert (state["round"], state["rolloff"], state["to_roll"]) == (1, 0, [1, 2, 3])
    assert state["deadline_ms"] == START_MS + ROLL_TIME_MS
    roll(game, 2)
    roll(game, 1)
    state = current(game)
    assert state["to_roll"] == [3]
    assert [entry["roll"] for entry in state["players"]] == [4, 2, None]
    roll(game, 3, 2_000)
    assert bodies(game, "round_lost") == [{"kind": "round_lost", "p": 2, "round": 1, "lives_left": 2}]
    state = current(game)
    assert (state["round"], state["rolloff"], state["to_roll"]) == (2, 0, [1, 2, 3])
    assert state["deadline_ms"] == 2_000 + ROLL_TIME_MS
    assert state["last"] == {"round": 1, "loser": 2, "rolls": {"1": 4, "2": 2, "3": 5}}
    assert lives(state) == {1: 3, 2: 2, 3: 3}
    assert [entry["roll"] for entry in state["players"]] == [None, None, None]


def test_rolls_use_the_server_rng_within_the_sides() -> None:
    game = new_game(2, seed=7, options=DiceOptions(lives=20, sides=3))
    seen = set()
    for _ in range(60):
        for pid in current(game)["to_roll"]:
            roll(game, pid)
        seen |= {body["value"] for body in bodies(game, "roll")}
        if game.end_reason:
            break
    assert seen == {1, 2, 3}


def test_a_tie_for_lowest_rolls_off_among_the_tied_only() -> None:
    game = new_game(4, dice=[2, 5, 2, 6, 3, 1])
    for pid in (1, 2, 3, 4):
        roll(game, pid, 1_500)
    assert bodies(game, "rolloff") == [{"kind": "rolloff", "round": 1, "rolloff": 1, "players": [1, 3]}]
    state = current(game)
    assert (state["round"], state["rolloff"], state["to_roll"]) == (1, 1, [1, 3])
    assert state["deadline_ms"] == 1_500 + ROLL_TIME_MS
    with pytest.raises(Refused) as refused:
        roll(game, 2)
    assert refused.value.code == "not_your_roll"
    roll(game, 3)
    roll(game, 1)
    rolls = bodies(game, "roll")
    assert [(b["p"], b["value"], b["round"], b["rolloff"]) for b in rolls] == [(3, 3, 1, 1), (1, 1, 1, 1)]
    state = current(game)
    assert lives(state) == {1: 2, 2: 3, 3: 3, 4: 3}
    assert state["last"] == {"round": 1, "loser": 1, "rolls": {"1": 1, "3": 3}}
    assert (state["round"], state["rolloff"], state["to_roll"]) == (2, 0, [1, 2, 3, 4])


def test_a_three_way_tie_rolls_off_again_and_again_until_exactly_one_is_lowest() -> None:
    # Round 1: 1, 2, 3 tie at 1. Roll-off 1: all three tie at 4. Roll-off 2: 2 and 3 tie at 2, 1 is safe.
    # Roll-off 3: only 2 and 3 roll; 3 is lowest.
    game = new_game(4, dice=[1, 1, 1, 6, 4, 4, 4, 5, 2, 2, 6, 3])
    for pid in (1, 2, 3, 4):
        roll(game, pid)
    assert current(game)["to_roll"] == [1, 2, 3]
    for pid in (1, 2, 3):
        roll(game, pid)
    assert current(game)["to_roll"] == [1, 2, 3]
    for pid in (1, 2, 3):
        roll(game, pid)
    state = current(game)
    assert (state["round"], state["rolloff"], state["to_roll"]) == (1, 3, [2, 3])
    roll(game, 2)
    roll(game, 3)
    assert [(b["players"], b["rolloff"]) for b in bodies(game, "rolloff")] == [
        ([1, 2, 3], 1), ([1, 2, 3], 2), ([2, 3], 3)]
    assert lives(current(game)) == {1: 3, 2: 3, 3: 2, 4: 3}


def test_a_player_who_lost_all_lives_is_out_and_the_next_round_goes_on_without_them() -> None:
    game = new_game(3, dice=[1, 5, 6, 3, 4, 5], options=DiceOptions(lives=1))
    for pid in (1, 2, 3):
        roll(game, pid)
    events = bodies(game)
    assert events[-2:] == [{"kind": "round_lost", "p": 1, "round": 1, "lives_left": 0},
                           {"kind": "out", "p": 1, "round": 1, "released": False}]
    state = current(game)
    assert state["to_roll"] == [2, 3]
    assert [(entry["p"], entry["lives"], entry["out"]) for entry in state["players"]] == [
        (1, 0, True), (2, 1, False), (3, 1, False)]
    with pytest.raises(Refused) as refused:
        roll(game, 1)
    assert refused.value.code == "not_your_roll"


def test_the_last_player_still_in_wins() -> None:
    game = new_game(2, dice=[2, 1, 3, 6], options=DiceOptions(lives=2))
    roll(game, 1)
    roll(game, 2)
    assert game.end_reason is None
    roll(game, 2)
    roll(game, 1, 5_000)
    assert game.end_reason == "winner"
    assert bodies(game)[-2:] == [{"kind": "round_lost", "p": 2, "round": 2, "lives_left": 0},
                                 {"kind": "out", "p": 2, "round": 2, "released": False}]
    assert game.next_wake_ms() is None
    assert game.clock_ms == 5_000 - START_MS
    game.advance(60_000)
    assert game.clock_ms == 5_000 - START_MS
    state = current(game)
    assert state["to_roll"] == [] and state["deadline_ms"] is None
    assert state["last"] == {"round": 2, "loser": 2, "rolls": {"1": 6, "2": 3}}
    assert [(s.pid, s.rank, s.score, dict(s.figures)) for s in game.standings()] == [
        (1, 1, 10, {"rounds_lost": 0, "rolls": 2}), (2, 2, 0, {"rounds_lost": 2, "rolls": 2})]


def test_roll_events_are_recorded_with_a_match_wide_version_and_the_others_are_not() -> None:
    game = new_game(3, dice=[2, 2, 5, 4, 1, 3, 3, 3])
    for pid in (1, 2, 3):
        roll(game, pid)
    roll(game, 2)
    roll(game, 1)
    for pid in (1, 2, 3):
        roll(game, pid)
    events = game.drain_events()
    rolls = [event for event in events if event.body["kind"] == "roll"]
    assert [event.body["v"] for event in rolls] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(event.record and event.to is None for event in rolls)
    assert rolls[0].body == {"kind": "roll", "p": 1, "value": 2, "round": 1, "rolloff": 0, "v": 1, "auto": False}
    assert all(not event.record for event in events if event.body["kind"] != "roll")
    assert current(game)["v"] == 8


# -- refusals ------------------------------------------------------------------------------------------

def test_rolling_before_the_start_is_refused_not_started() -> None:
    game = new_game(start=False)
    with pytest.raises(Refused) as refused:
        roll(game, 1)
    assert refused.value.code == "not_started"


def test_rolling_twice_in_a_throw_is_refused_and_changes_nothing() -> None:
    game = new_game(dice=[3, 4])
    roll(game, 1)
    game.drain_events()
    before = game.snapshot()
    assert game.state() is not None
    with pytest.raises(Refused) as refused:
        roll(game, 1)
    assert refused.value.code == "not_your_roll"
    assert game.snapshot() == before
    assert game.state() is None
    assert game.drain_events() == []


def test_rolling_after_the_end_is_refused_game_over() -> None:
    game = new_game(2, dice=[1, 2], options=DiceOptions(lives=1))
    roll(game, 1)
    roll(game, 2)
    assert game.end_reason == "winner"
    with pytest.raises(Refused) as refused:
        roll(game, 2)
    assert refused.value.code == "game_over"


def test_a_player_not_in_the_match_is_refused_not_your_roll() -> None:
    game = new_game(2)
    game.join(9, "late", START_MS + 50)
    with pytest.raises(Refused) as refused:
        roll(game, 9)
    assert refused.value.code == "not_your_roll"


# -- deadlines -----------------------------------------------------------------------------------------

def test_at_the_deadline_the_server_rolls_for_whoever_has_not() -> None:
    game = new_game(3, dice=[2, 4, 5])
    roll(game, 2)
    game.drain_events()
    assert game.next_wake_ms() == START_MS + ROLL_TIME_MS
    game.advance(START_MS + ROLL_TIME_MS - 1)  # early: harmless
    assert game.drain_events() == []
    game.advance(START_MS + ROLL_TIME_MS)
    rolls = bodies(game, "roll")
    assert [(b["p"], b["value"], b["auto"]) for b in rolls] == [(1, 4, True), (3, 5, True)]
    state = current(game)
    assert state["round"] == 2
    assert state["deadline_ms"] == START_MS + 2 * ROLL_TIME_MS
    assert game.next_wake_ms() == START_MS + 2 * ROLL_TIME_MS


def test_advance_at_any_other_time_is_harmless() -> None:
    game = new_game(dice=[1, 2, 3])
    current(game)
    for now in (START_MS, START_MS + 10, START_MS + 10, START_MS + 5_000):
        game.advance(now)
    assert game.state() is None
    assert game.drain_events() == []


def test_an_away_player_keeps_the_seat_and_is_rolled_for_at_the_deadline() -> None:
    game = new_game(2, dice=[5, 3])
    current(game)
    game.away(2, START_MS + 10)
    assert game.state() is None
    roll(game, 1)
    game.advance(START_MS + ROLL_TIME_MS)
    assert [(b["p"], b["auto"]) for b in bodies(game, "roll")] == [(1, False), (2, True)]
    assert lives(current(game)) == {1: 3, 2: 2}


def test_a_roll_that_arrives_after_the_deadline_comes_after_the_servers_rolls() -> None:
    game = new_game(2, dice=[5, 3, 4])
    roll(game, 1, START_MS + ROLL_TIME_MS + 5)  # the host had not called advance yet
    assert [(b["kind"], b.get("p"), b.get("round"), b.get("auto")) for b in bodies(game)] == [
        ("roll", 1, 1, True), ("roll", 2, 1, True), ("round_lost", 2, 1, None), ("roll", 1, 2, False)]
    assert current(game)["to_roll"] == [2]


def test_a_roll_after_the_deadline_from_a_player_it_put_out_is_refused() -> None:
    game = new_game(2, dice=[1, 3], options=DiceOptions(lives=1))
    with pytest.raises(Refused) as refused:
        roll(game, 1, START_MS + ROLL_TIME_MS)
    assert refused.value.code == "game_over"
    assert game.end_reason == "winner"


def test_a_rolloff_gets_its_own_deadline() -> None:
    game = new_game(3, dice=[2, 2, 6, 1, 4])
    for pid in (1, 2, 3):
        roll(game, pid, 3_000)
    assert game.next_wake_ms() == 3_000 + ROLL_TIME_MS
    game.advance(3_000 + ROLL_TIME_MS)
    assert [(b["p"], b["rolloff"], b["auto"]) for b in bodies(game, "roll")][-2:] == [(1, 1, True), (2, 1, True)]
    assert lives(current(game)) == {1: 2, 2: 3, 3: 3}


def test_the_time_limit_ends_the_match_ranked_by_lives_left_then_join_order() -> None:
    game = new_game(4, dice=[5, 1, 6, 6, 1, 6, 6, 6, 6, 6, 6, 1], time_limit_ms=20_000,
                    options=DiceOptions(lives=2))
    for pid in (1, 2, 3, 4):
        roll(game, pid)  # 2 loses a life
    for pid in (1, 2, 3, 4):
        roll(game, pid)  # 1 loses a life
    for pid in (1, 3, 4):
        roll(game, pid)
    deadline = current(game)["deadline_ms"]
    assert game.next_wake_ms() == deadline < START_MS + 20_000  # the roll deadline comes before the limit
    game.advance(deadline)  # 2 rolls lowest and is out
    assert bodies(game)[-2:] == [{"kind": "round_lost", "p": 2, "round": 3, "lives_left": 0},
                                 {"kind": "out", "p": 2, "round": 3, "released": False}]
    assert game.next_wake_ms() == START_MS + 20_000  # the limit comes before round 4's deadline
    game.advance(START_MS + 20_000 - 1)
    assert game.end_reason is None
    game.advance(START_MS + 20_000)
    assert game.end_reason == "time"
    assert game.clock_ms == 20_000
    assert game.next_wake_ms() is None
    # 3 and 4 have 2 lives left (3 joined first), 1 has 1, 2 is out.
    assert [(s.pid, s.rank, s.score) for s in game.standings()] == [(3, 1, 30), (4, 2, 20), (1, 3, 10), (2, 4, 0)]


def test_the_time_limit_ends_the_match_even_while_players_are_due_to_roll() -> None:
    game = new_game(3, dice=[], time_limit_ms=5_000)
    assert game.next_wake_ms() == START_MS + 5_000
    game.advance(START_MS + 5_000)
    assert game.end_reason == "time"
    assert game.drain_events() == []
    state = current(game)
    assert state["to_roll"] == [] and state["deadline_ms"] is None
    with pytest.raises(Refused) as refused:
        roll(game, 1, START_MS + 5_001)
    assert refused.value.code == "game_over"


# -- leaving and coming back ---------------------------------------------------------------------------

def test_releasing_a_seat_puts_the_player_out_at_once_and_the_round_goes_on() -> None:
    game = new_game(3, dice=[2, 3, 6])
    roll(game, 1)
    game.release(3, START_MS + 200)
    assert bodies(game, "out") == [{"kind": "out", "p": 3, "round": 1, "released": True}]
    state = current(game)
    assert state["to_roll"] == [2]
    assert [entry["out"] for entry in state["players"]] == [False, False, True]
    roll(game, 2)
    state = current(game)
    assert lives(state) == {1: 2, 2: 3, 3: 3}
    assert (state["round"], state["to_roll"]) == (2, [1, 2])


def test_a_release_that_empties_the_players_due_resolves_with_those_who_rolled() -> None:
    game = new_game(4, dice=[4, 2, 3, 1])
    roll(game, 1)
    roll(game, 2)
    roll(game, 3)
    game.release(4, START_MS + 300)
    assert [b["kind"] for b in bodies(game)][-2:] == ["out", "round_lost"]
    state = current(game)
    assert state["last"] == {"round": 1, "loser": 2, "rolls": {"1": 4, "2": 2, "3": 3}}
    assert state["to_roll"] == [1, 2, 3]


def test_the_roll_of_a_player_who_left_does_not_count() -> None:
    game = new_game(3, dice=[4, 1, 3])
    roll(game, 1)
    roll(game, 2)
    game.release(2, START_MS + 300)
    roll(game, 3)
    assert current(game)["last"] == {"round": 1, "loser": 3, "rolls": {"1": 4, "3": 3}}


def test_a_rolloff_goes_on_with_whoever_is_left_in_it() -> None:
    game = new_game(4, dice=[2, 2, 5, 6, 6])
    for pid in (1, 2, 3, 4):
        roll(game, pid)
    roll(game, 1)
    game.release(2, START_MS + 300)
    state = current(game)
    assert state["last"] == {"round": 1, "loser": 1, "rolls": {"1": 6}}
    assert state["to_roll"] == [1, 3, 4]


def test_a_round_whose_due_players_all_left_has_no_loser() -> None:
    game = new_game(4, dice=[2, 2, 5, 6])
    for pid in (1, 2, 3, 4):
        roll(game, pid)
    game.release(1, START_MS + 300)
    game.release(2, START_MS + 400)
    state = current(game)
    assert state["last"] == {"round": 1, "loser": None, "rolls": {}}
    assert (state["round"], state["to_roll"]) == (2, [3, 4])
    assert [s.pid for s in game.standings()] == [3, 4, 2, 1]


def test_when_everyone_else_releases_the_last_player_wins() -> None:
    game = new_game(3, dice=[1])
    roll(game, 1)
    game.release(2, START_MS + 200)
    assert game.end_reason is None
    game.release(3, START_MS + 300)
    assert game.end_reason == "last_player"
    assert [(s.pid, s.rank, s.score) for s in game.standings()] == [(1, 1, 20), (3, 2, 10), (2, 3, 0)]


def test_a_release_before_the_start_takes_the_player_out_of_the_match() -> None:
    game = new_game(3, start=False)
    game.release(2, 500)
    game.start(START_MS)
    assert current(game)["to_roll"] == [1, 3]
    assert [s.pid for s in game.standings()] == [1, 3]


def test_a_match_started_with_one_player_ends_at_once() -> None:
    game = new_game(2, start=False)
    game.release(2, 500)
    game.start(START_MS)
    assert game.end_reason == "last_player"
    assert [(s.pid, s.rank, s.score) for s in game.standings()] == [(1, 1, 0)]


def test_an_away_player_who_comes_back_keeps_everything() -> None:
    game = new_game(2, dice=[1, 4, 5])
    roll(game, 1)
    game.away(1, START_MS + 200)
    roll(game, 2)
    sent = current(game)
    game.join(1, "p1", START_MS + 300)
    assert game.state() is None  # nothing changed for the others
    state = game.welcome(1)["view"]
    assert state == sent
    assert lives(state) == {1: 2, 2: 3}
    assert state["to_roll"] == [1, 2]
    assert state["players"][0]["name"] == "p1"
    roll(game, 1, START_MS + 400)


def test_a_newcomer_after_the_start_is_not_in_the_match() -> None:
    game = new_game(2)
    game.join(3, "late", START_MS + 10)
    state = current(game)
    assert [entry["p"] for entry in state["players"]] == [1, 2]
    assert state["to_roll"] == [1, 2]
    assert [s.pid for s in game.standings()] == [1, 2]
    game.release(3, START_MS + 20)
    assert game.end_reason is None


def test_releases_after_the_end_change_nothing() -> None:
    game = new_game(2, dice=[1, 2], options=DiceOptions(lives=1))
    roll(game, 1)
    roll(game, 2)
    result = game.standings()
    game.drain_events()
    game.state()
    game.release(1, START_MS + 500)
    assert game.standings() == result
    assert game.drain_events() == []
    assert game.state() is None


# -- results -------------------------------------------------------------------------------------------

def test_standings_rank_by_elimination_time_with_leavers_eliminated_when_they_leave() -> None:
    # Round 1: 3 loses its only life. Then 1 leaves. Round 2: 4 loses; 2 wins.
    game = new_game(4, dice=[5, 6, 1, 4, 6, 2], options=DiceOptions(lives=1))
    for pid in (1, 2, 3, 4):
        roll(game, pid)
    game.release(1, START_MS + 500)
    roll(game, 2)
    roll(game, 4)
    assert game.end_reason == "winner"
    assert [(s.pid, s.rank, s.score, dict(s.figures)) for s in game.standings()] == [
        (2, 1, 30, {"rounds_lost": 0, "rolls": 2}),
        (4, 2, 20, {"rounds_lost": 1, "rolls": 2}),
        (1, 3, 10, {"rounds_lost": 0, "rolls": 1}),
        (3, 4, 0, {"rounds_lost": 1, "rolls": 1}),
    ]


# -- state, determinism, snapshots ---------------------------------------------------------------------

def test_state_is_none_when_nothing_changed() -> None:
    game = new_game(2, dice=[3, 4], start=False)
    assert game.state() is not None
    assert game.state() is None
    game.start(START_MS)
    assert game.state() is not None
    assert game.state() is None
    game.away(1, START_MS + 5)
    game.advance(START_MS + 6)
    assert game.state() is None
    roll(game, 1)
    assert game.state() is not None
    assert game.state() is None


def test_the_state_before_the_start_lists_the_players_in_join_order() -> None:
    game = new_game(3, start=False)
    assert game.state() == {
        "round": 0, "rolloff": 0, "to_roll": [], "deadline_ms": None, "v": 0, "last": None,
        "players": [{"p": pid, "name": f"p{pid}", "lives": 3, "out": False, "roll": None} for pid in (1, 2, 3)]}
    assert game.next_wake_ms() is None
    assert game.clock_ms == 0


def play_script(game: Game, steps: list[tuple[str, int, int]]) -> list[Any]:
    """Apply (action, pid, now) steps; return everything the game said."""
    said: list[Any] = []
    for action, pid, now in steps:
        try:
            if action == "roll":
                roll(game, pid, now)
            elif action == "advance":
                game.advance(now)
            elif action == "release":
                game.release(pid, now)
        except Refused as refused:
            said.append(("refused", refused.code))
        said.append((game.state(), [(e.body, e.to, e.record) for e in game.drain_events()], game.end_reason,
                     game.next_wake_ms()))
    said.append([(s.pid, s.rank, s.score, dict(s.figures)) for s in game.standings()])
    return said


def long_script() -> list[tuple[str, int, int]]:
    """Five players roll in a fixed order, sometimes late (the deadline rolls for them), one leaves midway."""
    steps: list[tuple[str, int, int]] = []
    now = START_MS
    for turn in range(120):
        now += 700
        for pid in (3, 1, 5, 2, 4):
            if (turn + pid) % 4:
                steps.append(("roll", pid, now))
                now += 100
        if turn == 6:
            steps.append(("release", 5, now))
        now += ROLL_TIME_MS
        steps.append(("advance", 0, now))
    return steps


def test_the_same_seed_and_inputs_give_the_same_match() -> None:
    first = play_script(new_game(5, seed=42), long_script())
    second = play_script(new_game(5, seed=42), long_script())
    assert first == second
    assert first[-1][0][1] == 1
    other = play_script(new_game(5, seed=43), long_script())
    assert other != first


@pytest.mark.parametrize("cut", [3, 17, 40])
def test_a_snapshot_mid_match_restores_and_plays_on_identically(cut: int) -> None:
    steps = long_script()
    whole = play_script(new_game(5, seed=9), steps)

    game = new_game(5, seed=9)
    head = play_script(game, steps[:cut])
    assert game.end_reason is None
    snapshot = orjson.loads(orjson.dumps(game.snapshot()))
    assert [entry["pid"] for entry in snapshot["players"]] == [1, 2, 3, 4, 5]

    restored = DEFINITION.make(GameContext(random.Random(9), 0, None))
    restored.restore(snapshot)
    assert restored.snapshot() == snapshot
    latest = [said[0] for said in head[:-1] if len(said) == 4 and said[0] is not None][-1]
    assert restored.state() == latest
    for pid in (1, 2, 3, 4):  # every player is away until joined again
        restored.join(pid, f"p{pid}", steps[cut][2])
    tail = play_script(restored, steps[cut:])
    assert head[:-1] + tail == whole


def test_a_snapshot_keeps_a_rolloff_its_deadline_and_the_versions() -> None:
    game = new_game(3, dice=[2, 2, 6, 5])
    for pid in (1, 2, 3):
        roll(game, pid, 2_000)
    roll(game, 2, 2_100)
    snapshot = orjson.loads(orjson.dumps(game.snapshot()))
    restored = DEFINITION.make(GameContext(ScriptedDice([1]), 0, None))
    restored.restore(snapshot)
    state = current(restored)
    assert (state["round"], state["rolloff"], state["to_roll"], state["v"]) == (1, 1, [1], 4)
    assert state["deadline_ms"] == 2_000 + ROLL_TIME_MS
    assert restored.next_wake_ms() == 2_000 + ROLL_TIME_MS
    restored.advance(2_000 + ROLL_TIME_MS)
    assert [(b["p"], b["value"], b["v"], b["auto"]) for b in bodies(restored, "roll")] == [(1, 1, 5, True)]
    assert lives(current(restored)) == {1: 2, 2: 3, 3: 3}


def test_restore_refuses_another_snapshot_format() -> None:
    game = new_game(2, start=False)
    with pytest.raises(ValueError):
        game.restore({"format": 99, "players": []})


def test_restore_needs_a_game_just_built() -> None:
    game = new_game(2)
    with pytest.raises(ValueError):
        game.restore(new_game(2).snapshot())


# -- schemas -------------------------------------------------------------------------------------------

def test_the_roll_message_decodes_and_ignores_unknown_fields() -> None:
    assert msgspec.json.decode(b'{"type": "roll"}', type=Roll) == Roll()
    assert msgspec.json.decode(b'{"type": "roll", "value": 6}', type=Roll) == Roll()


@pytest.mark.parametrize("raw", [b'{"type": "rol"}', b'{"type": "move"}', b'{"type": null}', b"[]", b'"roll"',
                                 b'{"type": 1}', b"null"])
def test_malformed_messages_are_rejected_by_the_schema(raw: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=Roll)


@pytest.mark.parametrize("raw", [{"lives": 0}, {"lives": 21}, {"sides": 1}, {"sides": 101},
                                 {"roll_time_ms": 999}, {"roll_time_ms": 120_001}, {"lives": "3"}, {"live": 3}])
def test_options_out_of_range_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, DiceOptions)


def test_options_default_and_accept_their_bounds() -> None:
    assert msgspec.convert({}, DiceOptions) == DiceOptions(lives=3, sides=6, roll_time_ms=15_000)
    assert msgspec.convert({"lives": 20, "sides": 100, "roll_time_ms": 120_000}, DiceOptions).sides == 100
    assert msgspec.convert({"lives": 1, "sides": 2, "roll_time_ms": 1_000}, DiceOptions).lives == 1


def test_the_doc_table_lists_the_messages_and_their_fields() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "games" / "dice.md").read_text()
    section = doc.split("## Messages", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {re.findall(r"`([^`]+)`", row.split("|")[1])[0]: row.split("|")[2].strip() for row in rows}
    assert documented == {"roll": "—"}
    for code in ("not_your_roll", "not_started", "game_over"):
        assert f"`{code}`" in doc


# -- bots ----------------------------------------------------------------------------------------------

DiceMessage = Roll  # the game's only message: the union of its schemas


def run_bot_match(players: int, seed: int, options: DiceOptions | None, *, time_limit_ms: int = 0,
                  step_ms: int = 50, limit_ms: int = 3_600_000,
                  drop: tuple[int, int, int] | None = None) -> tuple[Game, list[str], list[dict[str, Any]]]:
    """Bots play a whole match against the game, every message through JSON as on the wire. `drop` (pid, from,
    until): that bot's connection is gone meanwhile, then a new bot comes back in its seat."""
    game = DEFINITION.make(GameContext(random.Random(seed), time_limit_ms, options))
    assert DEFINITION.bot is not None
    bots = {pid: DEFINITION.bot(random.Random(seed * 100 + pid)) for pid in range(1, players + 1)}
    refusals: list[str] = []
    rolls: list[dict[str, Any]] = []
    tick = 0
    now = 0

    def deliver(message: dict[str, Any], to: int | None = None) -> None:
        wire = orjson.loads(orjson.dumps(message))
        for pid, bot in bots.items():
            if to is None or to == pid:
                assert bot.on_message(wire, now) == []

    for pid, bot in bots.items():
        game.join(pid, f"bot{pid}", now)
        bot.on_message(orjson.loads(orjson.dumps({"type": "welcome", "you": pid, **game.welcome(pid)})), now)
    now = 2_000
    game.start(now)
    away: set[int] = set()
    while game.end_reason is None and now < limit_ms:
        if drop is not None and drop[1] <= now < drop[2] and drop[0] in bots:
            game.away(drop[0], now)
            del bots[drop[0]]
            away.add(drop[0])
        elif drop is not None and now >= drop[2] and drop[0] in away:
            away.discard(drop[0])
            game.join(drop[0], f"bot{drop[0]}", now)
            bots[drop[0]] = DEFINITION.bot(random.Random(seed))
            bots[drop[0]].on_message(
                orjson.loads(orjson.dumps({"type": "welcome", "you": drop[0], **game.welcome(drop[0])})), now)
        for pid, bot in bots.items():
            for sent in bot.on_tick(now):
                message = msgspec.json.decode(orjson.dumps(sent), type=DiceMessage)
                try:
                    game.handle(pid, message, now)
                except Refused as refused:
                    refusals.append(refused.code)
        wake = game.next_wake_ms()
        if wake is not None and wake <= now:
            game.advance(now)
        state = game.state()
        if state is not None:
            tick += 1
            deliver({"type": "state", "tick": tick, "t": game.clock_ms, **state})
        for event in game.drain_events():
            if event.body["kind"] == "roll":
                rolls.append(event.body)
            deliver({"type": "event", **event.body}, event.to)
        now += step_ms
    deliver({"type": "match_end", "reason": game.end_reason,
             "standings": [{"p": s.pid, "rank": s.rank, "score": s.score, **s.figures} for s in game.standings()]})
    return game, refusals, rolls


def test_bots_play_a_whole_match_through_json_without_a_refusal() -> None:
    game, refusals, rolls = run_bot_match(5, seed=3, options=None)
    assert refusals == []
    assert game.end_reason == "winner"
    assert rolls and not any(body["auto"] for body in rolls)
    assert [body["v"] for body in rolls] == list(range(1, len(rolls) + 1))
    thrown = [(body["p"], body["round"], body["rolloff"]) for body in rolls]
    assert len(thrown) == len(set(thrown))  # never twice for the same throw
    standings = game.standings()
    assert [s.rank for s in standings] == [1, 2, 3, 4, 5]
    assert [s.score for s in standings] == [40, 30, 20, 10, 0]
    assert sum(s.figures["rounds_lost"] for s in standings) >= 4 * 3


def test_a_bot_that_drops_is_rolled_for_and_plays_on_when_it_comes_back() -> None:
    game, refusals, rolls = run_bot_match(3, seed=8, options=DiceOptions(lives=5, roll_time_ms=2_000),
                                          drop=(2, 5_000, 20_000))
    assert refusals == []
    assert game.end_reason == "winner"
    assert any(body["p"] == 2 and body["auto"] for body in rolls)
    assert any(body["p"] == 2 and not body["auto"] and body["round"] > 3 for body in rolls)


def test_bots_roll_before_the_shortest_deadline() -> None:
    game, refusals, rolls = run_bot_match(3, seed=11, options=DiceOptions(lives=2, sides=2, roll_time_ms=1_000))
    assert refusals == []
    assert game.end_reason == "winner"
    assert any(body["rolloff"] > 0 for body in rolls)
    assert not any(body["auto"] for body in rolls)


def test_bots_stop_at_a_time_limit() -> None:
    game, refusals, _ = run_bot_match(4, seed=5, options=DiceOptions(lives=20, sides=100), time_limit_ms=20_000)
    assert refusals == []
    assert game.end_reason == "time"


def test_a_bot_waits_its_turn_and_rolls_once_per_throw() -> None:
    bot = DiceBot(random.Random(1))
    bot.on_message({"type": "welcome", "you": 2, "lives": 3, "sides": 6, "roll_time_ms": 15_000}, 0)
    state = {"type": "state", "tick": 1, "t": 0, "round": 1, "rolloff": 0, "to_roll": [1, 3], "deadline_ms": 100,
             "v": 0, "players": [], "last": None}
    bot.on_message(state, 0)
    assert bot.on_tick(10_000) == []
    bot.on_message({**state, "to_roll": [1, 2, 3]}, 0)
    assert bot.on_tick(199) == []
    sent = [message for now in range(200, 1_600, 50) for message in bot.on_tick(now)]
    assert sent == [{"type": "roll"}]
    bot.on_message({**state, "to_roll": [1, 2, 3]}, 2_000)  # a stale state for the same throw
    assert bot.on_tick(10_000) == []
    bot.on_message({**state, "rolloff": 1, "to_roll": [2, 3]}, 3_000)
    assert [message for now in range(3_000, 4_600, 50) for message in bot.on_tick(now)] == [{"type": "roll"}]
    bot.on_message({**state, "round": 2, "to_roll": [2]}, 5_000)
    bot.on_message({"type": "match_end"}, 5_001)
    assert bot.on_tick(20_000) == []


def test_a_bot_that_comes_back_rolls_from_the_view_in_its_welcome() -> None:
    game = new_game(2, dice=[4, 5])
    bot = DiceBot(random.Random(2))
    bot.on_message(orjson.loads(orjson.dumps({"type": "welcome", "you": 2, **game.welcome(2)})), 5_000)
    sent = [message for now in range(5_000, 6_600, 50) for message in bot.on_tick(now)]
    assert sent == [{"type": "roll"}]
    game.handle(2, msgspec.json.decode(orjson.dumps(sent[0]), type=DiceMessage), 6_600)
