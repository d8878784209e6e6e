"""Tic-tac-toe with a line: plain calls on the game with a hand-driven room clock, and whole matches of its bots."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from game.api import Event, Forming, GameContext, Refused, Standing, message_type
from game.tictactoe import (
    DEFINITION,
    Move,
    TicTacToe,
    TicTacToeBot,
    TicTacToeOptions,
    choose_cell,
)

X_WINS_TOP_ROW = (0, 3, 1, 4, 2)  # X 0 1 2, O 3 4
O_WINS_MIDDLE_ROW = (0, 3, 1, 4, 8, 5)  # X 0 1 8, O 3 4 5
DRAW = (0, 1, 2, 4, 3, 5, 7, 6, 8)  # X O X / X O O / O X X
DOC = Path(__file__).resolve().parent.parent / "docs" / "games" / "tictactoe.md"


def new_game(options: TicTacToeOptions | None = None, time_limit_ms: int = 0) -> TicTacToe:
    return TicTacToe(GameContext(random.Random(1), time_limit_ms, options))


def started(players: int = 2, options: TicTacToeOptions | None = None, time_limit_ms: int = 0,
            now_ms: int = 1000) -> TicTacToe:
    """A match started at `now_ms` with pids 1..players (names p1, p2...), its first state and events read."""
    game = new_game(options, time_limit_ms)
    for pid in range(1, players + 1):
        game.join(pid, f"p{pid}", 0)
    game.start(now_ms)
    game.state()
    game.drain_events()
    return game


def view(game: TicTacToe) -> dict[str, Any]:
    """What a client sees now (the state, whether or not it changed)."""
    current: dict[str, Any] = game.welcome(1)["view"]
    return current


def play(game: TicTacToe, cells: tuple[int, ...], now_ms: int = 2000) -> None:
    """Each cell in turn by whoever's turn it is."""
    for cell in cells:
        game.handle(view(game)["turn"], Move(cell), now_ms)


def kinds(events: list[Event]) -> list[str]:
    return [event.body["kind"] for event in events]


def refusal(game: TicTacToe, pid: int, cell: int, now_ms: int = 2000) -> str:
    """The code `pid` playing `cell` at `now_ms` is refused with; the game must be unchanged by it."""
    game.advance(now_ms)  # the room clock moving on is not the refusal's doing
    game.state()
    game.drain_events()
    before = game.snapshot()
    with pytest.raises(Refused) as refused:
        game.handle(pid, Move(cell), now_ms)
    assert game.snapshot() == before
    assert game.state() is None
    assert game.drain_events() == []
    return refused.value.code


# -- the definition and schemas -------------------------------------------------------------------

def test_the_definition_declares_two_seats_a_line_of_eight_and_the_figures() -> None:
    assert DEFINITION.mode == "tictactoe"
    assert DEFINITION.title == "Tic-tac-toe with a line"
    assert (DEFINITION.seats.min, DEFINITION.seats.max, DEFINITION.seats.line, DEFINITION.seats.backfill) == (
        2, 2, 8, True)
    assert DEFINITION.forming is Forming.AT_ONCE
    assert DEFINITION.clock.event_driven
    assert [message_type(cls) for cls in DEFINITION.messages] == ["move"]
    assert tuple(DEFINITION.figures) == ("wins", "losses", "draws")
    assert DEFINITION.options is TicTacToeOptions
    assert isinstance(DEFINITION.make(GameContext(random.Random(1), 0)), TicTacToe)
    assert DEFINITION.bot is not None and isinstance(DEFINITION.bot(random.Random(1)), TicTacToeBot)


def test_a_move_decodes_with_a_cell_from_0_to_8_and_ignores_unknown_fields() -> None:
    assert msgspec.json.decode(b'{"type": "move", "cell": 0}', type=Move) == Move(0)
    assert msgspec.json.decode(b'{"type": "move", "cell": 8, "extra": 1}', type=Move) == Move(8)


@pytest.mark.parametrize("raw", [
    b'{"type": "move", "cell": -1}',
    b'{"type": "move", "cell": 9}',
    b'{"type": "move", "cell": "4"}',
    b'{"type": "move", "cell": 4.5}',
    b'{"type": "move", "cell": null}',
    b'{"type": "move"}',
    b'{"type": "jump", "cell": 4}',
])
def test_the_move_schema_rejects_bad_input(raw: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=Move)


def test_options_default_to_20_s_turns_and_unlimited_boards_and_are_bounded() -> None:
    assert msgspec.json.decode(b"{}", type=TicTacToeOptions) == TicTacToeOptions(turn_ms=20_000, boards=0)
    assert msgspec.json.decode(b'{"turn_ms": 2000, "boards": 1000}', type=TicTacToeOptions).boards == 1000
    for raw in (b'{"turn_ms": 1999}', b'{"turn_ms": 300001}', b'{"boards": -1}', b'{"boards": 1001}',
                b'{"turns": 3}'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(raw, type=TicTacToeOptions)


def test_the_doc_table_lists_every_message_and_field_with_its_range() -> None:
    text = DOC.read_text()
    section = text.split("## Messages", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) == len(DEFINITION.messages)
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[0] == "`move`"
    assert re.fullmatch(r"`cell` \(int 0–8\)", cells[1])
    for code in ("not_your_turn", "cell_taken", "not_playing", "not_started", "game_over"):
        assert f"`{code}`" in text


# -- starting ---------------------------------------------------------------------------------------

def test_start_makes_the_first_two_in_join_order_x_and_o_and_lines_up_the_rest() -> None:
    game = new_game()
    for pid in (1, 2, 3, 4):
        game.join(pid, f"p{pid}", 0)
    game.start(1000)
    state = game.state()
    assert state is not None
    assert (state["x"], state["o"], state["turn"], state["board_no"]) == (1, 2, 1, 1)
    assert state["board"] == [""] * 9
    assert state["turn_ends_ms"] == 1000 + 20_000
    assert state["line"] == [{"p": 3, "pos": 1}, {"p": 4, "pos": 2}]
    assert [event.body for event in game.drain_events()] == [
        {"kind": "seat", "p": 1, "mark": "X"}, {"kind": "seat", "p": 2, "mark": "O"}]
    assert game.clock_ms == 0
    assert game.next_wake_ms() == 21_000


def test_before_start_nobody_plays_and_the_state_lists_who_is_in() -> None:
    game = new_game()
    game.join(1, "ann", 0)
    game.join(2, "bob", 10)
    state = game.state()
    assert state is not None
    assert (state["x"], state["o"], state["turn"], state["turn_ends_ms"], state["board_no"]) == (
        None, None, None, None, 0)
    assert state["players"] == [{"p": 1, "name": "ann", "wins": 0, "losses": 0, "draws": 0},
                                {"p": 2, "name": "bob", "wins": 0, "losses": 0, "draws": 0}]
    assert game.next_wake_ms() is None
    assert refusal(game, 1, 4) == "not_started"


def test_a_start_with_one_player_ends_the_match_last_player_with_them_first() -> None:
    game = new_game()
    game.join(1, "ann", 0)
    game.join(2, "bob", 0)
    game.release(2, 5)
    game.start(1000)
    assert game.end_reason == "last_player"
    assert game.standings() == [Standing(1, 1, 0, {"wins": 0, "losses": 0, "draws": 0})]


# -- boards -----------------------------------------------------------------------------------------

def test_x_moves_first_and_the_turn_passes_with_a_fresh_deadline() -> None:
    game = started()
    game.handle(1, Move(4), 1500)
    state = game.state()
    assert state is not None
    assert state["board"][4] == "X" and state["turn"] == 2 and state["turn_ends_ms"] == 1500 + 20_000
    assert [event.body for event in game.drain_events()] == [{"kind": "move", "p": 1, "cell": 4, "mark": "X"}]
    game.handle(2, Move(0), 1700)
    assert view(game)["board"][0] == "O" and view(game)["turn"] == 1


def test_three_in_a_row_wins_and_the_loser_goes_to_the_back_of_the_line() -> None:
    game = started(players=4)
    play(game, X_WINS_TOP_ROW, now_ms=3000)
    events = [event.body for event in game.drain_events()]
    assert events[-2:] == [{"kind": "board_over", "winner": 1, "loser": 2, "draw": False, "reason": "three"},
                           {"kind": "seat", "p": 3, "mark": "O"}]
    state = view(game)
    assert (state["x"], state["o"], state["turn"], state["board_no"]) == (1, 3, 1, 2)
    assert state["board"] == [""] * 9 and state["turn_ends_ms"] == 3000 + 20_000
    assert state["line"] == [{"p": 4, "pos": 1}, {"p": 2, "pos": 2}]
    scores = {entry["p"]: (entry["wins"], entry["losses"], entry["draws"]) for entry in state["players"]}
    assert scores == {1: (1, 0, 0), 2: (0, 1, 0), 3: (0, 0, 0), 4: (0, 0, 0)}


def test_when_x_loses_the_winner_keeps_o_and_the_newcomer_takes_x_and_moves_first() -> None:
    game = started(players=3)
    play(game, O_WINS_MIDDLE_ROW)
    events = [event.body for event in game.drain_events()]
    assert events[-2:] == [{"kind": "board_over", "winner": 2, "loser": 1, "draw": False, "reason": "three"},
                           {"kind": "seat", "p": 3, "mark": "X"}]
    state = view(game)
    assert (state["x"], state["o"], state["turn"]) == (3, 2, 3)
    assert state["line"] == [{"p": 1, "pos": 1}]


def test_after_a_loss_with_an_empty_line_the_same_two_play_again_with_the_same_markers() -> None:
    game = started()
    play(game, O_WINS_MIDDLE_ROW)
    assert kinds(game.drain_events())[-1] == "board_over"  # nobody took a new marker
    state = view(game)
    assert (state["x"], state["o"], state["turn"], state["board_no"], state["line"]) == (1, 2, 1, 2, [])


def test_a_draw_between_players_active_equally_long_sends_x_to_the_line() -> None:
    game = started(players=3)
    play(game, DRAW)
    events = [event.body for event in game.drain_events()]
    assert events[-2:] == [{"kind": "board_over", "winner": None, "loser": None, "draw": True, "reason": "draw"},
                           {"kind": "seat", "p": 3, "mark": "X"}]
    state = view(game)
    assert (state["x"], state["o"], state["turn"]) == (3, 2, 3)
    assert state["line"] == [{"p": 1, "pos": 1}]
    assert [entry["draws"] for entry in state["players"]] == [1, 1, 0]


def test_a_draw_sends_the_player_active_longer_to_the_line_even_when_they_hold_o() -> None:
    game = started(players=3)
    play(game, X_WINS_TOP_ROW)  # 1 stays X (2 boards from now on), 3 comes in as O
    play(game, DRAW)
    events = [event.body for event in game.drain_events()]
    assert events[-1] == {"kind": "seat", "p": 2, "mark": "X"}
    state = view(game)
    assert (state["x"], state["o"], state["turn"]) == (2, 3, 2)
    assert state["line"] == [{"p": 1, "pos": 1}]

    game = started(players=3)
    play(game, O_WINS_MIDDLE_ROW)  # 2 stays O, 3 comes in as X
    play(game, DRAW)
    assert [event.body for event in game.drain_events()][-1] == {"kind": "seat", "p": 1, "mark": "O"}
    state = view(game)
    assert (state["x"], state["o"]) == (3, 1)
    assert state["line"] == [{"p": 2, "pos": 1}]


def test_a_draw_with_an_empty_line_swaps_markers_so_the_other_moves_first() -> None:
    game = started()
    play(game, DRAW)
    events = [event.body for event in game.drain_events()]
    assert events[-2:] == [{"kind": "seat", "p": 2, "mark": "X"}, {"kind": "seat", "p": 1, "mark": "O"}]
    state = view(game)
    assert (state["x"], state["o"], state["turn"], state["line"]) == (2, 1, 2, [])
    play(game, DRAW)
    state = view(game)
    assert (state["x"], state["o"], state["turn"]) == (1, 2, 1)


# -- refusals ---------------------------------------------------------------------------------------

def test_moving_out_of_turn_is_refused() -> None:
    game = started(players=3)
    assert refusal(game, 2, 4) == "not_your_turn"
    game.handle(1, Move(4), 2000)
    assert refusal(game, 1, 0) == "not_your_turn"


def test_a_taken_cell_is_refused() -> None:
    game = started()
    game.handle(1, Move(4), 2000)
    game.state()
    game.drain_events()
    assert refusal(game, 2, 4) == "cell_taken"


def test_a_player_in_the_line_is_not_playing() -> None:
    game = started(players=3)
    assert refusal(game, 3, 4) == "not_playing"


def test_a_move_after_the_match_is_over_is_refused() -> None:
    game = started(options=TicTacToeOptions(boards=1))
    play(game, X_WINS_TOP_ROW)
    game.state()
    game.drain_events()
    assert game.end_reason == "boards"
    assert refusal(game, 1, 5) == "game_over"
    assert refusal(game, 2, 5) == "game_over"


# -- the turn clock and the time limit --------------------------------------------------------------

def test_running_out_of_turn_time_forfeits_the_board() -> None:
    game = started(players=3, options=TicTacToeOptions(turn_ms=5000))
    game.handle(1, Move(4), 2000)
    game.state()
    game.drain_events()
    assert game.next_wake_ms() == 7000
    game.advance(6999)
    assert game.state() is None and game.drain_events() == []
    game.advance(7000)
    events = [event.body for event in game.drain_events()]
    assert events == [{"kind": "board_over", "winner": 1, "loser": 2, "draw": False, "reason": "timeout"},
                      {"kind": "seat", "p": 3, "mark": "O"}]
    state = game.state()
    assert state is not None
    assert (state["x"], state["o"], state["turn"], state["turn_ends_ms"]) == (1, 3, 1, 12_000)
    assert game.next_wake_ms() == 12_000


def test_a_move_arriving_once_the_turn_ran_out_is_too_late() -> None:
    game = started(options=TicTacToeOptions(turn_ms=5000), now_ms=0)
    game.handle(1, Move(4), 1000)
    with pytest.raises(Refused) as refused:
        game.handle(2, Move(0), 6000)  # the host had not called advance yet: the move still comes too late
    assert refused.value.code == "not_your_turn"
    assert [event.body["reason"] for event in game.drain_events() if event.body["kind"] == "board_over"] == [
        "timeout"]
    state = view(game)
    assert state["board_no"] == 2 and state["turn"] == 1 and state["board"] == [""] * 9


def test_advance_at_any_other_time_changes_nothing() -> None:
    game = started(players=3)
    game.handle(1, Move(4), 2000)
    game.state()
    game.drain_events()
    before = game.snapshot()
    for now in (2000, 2500, 10_000, 21_999):
        game.advance(now)
    assert game.state() is None and game.drain_events() == []
    assert {k: v for k, v in game.snapshot().items() if k != "now_ms"} == {
        k: v for k, v in before.items() if k != "now_ms"}
    assert game.clock_ms == 21_999 - 1000


def test_the_time_limit_ends_the_match_at_once_with_the_board_unfinished() -> None:
    game = started(time_limit_ms=30_000, options=TicTacToeOptions(turn_ms=20_000))
    game.handle(1, Move(4), 15_000)
    game.handle(2, Move(0), 30_000)
    assert game.next_wake_ms() == 31_000  # the match's limit comes before 2's turn would run out
    game.advance(31_000)
    assert game.end_reason == "time"
    assert game.clock_ms == 30_000
    assert "board_over" not in kinds(game.drain_events())
    state = game.state()
    assert state is not None
    assert state["board"][0] == "O" and state["board"][4] == "X"
    assert state["turn"] is None and state["turn_ends_ms"] is None
    assert game.next_wake_ms() is None
    assert [s.score for s in game.standings()] == [0, 0]


def test_a_turn_running_out_exactly_at_the_time_limit_leaves_the_board_unfinished() -> None:
    game = started(time_limit_ms=20_000, options=TicTacToeOptions(turn_ms=20_000))
    game.advance(21_000)
    assert game.end_reason == "time"
    assert "board_over" not in kinds(game.drain_events())


def test_a_late_advance_forfeits_the_turn_that_ran_out_before_the_time_limit() -> None:
    game = started(time_limit_ms=60_000, options=TicTacToeOptions(turn_ms=20_000))
    game.advance(70_000)  # one call past both: the timeout at 21 s, then the limit at 61 s
    assert game.end_reason == "time"
    assert kinds(game.drain_events()) == ["board_over"]
    assert [(s.pid, s.figures["wins"]) for s in game.standings()] == [(2, 1), (1, 0)]


def test_the_boards_option_ends_the_match_after_that_many_boards() -> None:
    game = started(players=3, options=TicTacToeOptions(boards=2))
    play(game, X_WINS_TOP_ROW)
    assert game.end_reason is None
    play(game, DRAW)
    assert game.end_reason == "boards"
    state = view(game)
    assert state["turn"] is None and state["board_no"] == 2
    assert game.next_wake_ms() is None


# -- leaving, away, coming back ---------------------------------------------------------------------

def test_an_active_player_who_releases_forfeits_and_the_first_in_line_takes_their_marker() -> None:
    game = started(players=4)
    game.handle(1, Move(4), 2000)
    game.drain_events()
    game.release(1, 3000)
    events = [event.body for event in game.drain_events()]
    assert events == [{"kind": "board_over", "winner": 2, "loser": 1, "draw": False, "reason": "left"},
                      {"kind": "seat", "p": 3, "mark": "X"}]
    state = game.state()
    assert state is not None
    assert (state["x"], state["o"], state["turn"], state["board_no"]) == (3, 2, 3, 2)
    assert state["board"] == [""] * 9
    assert state["line"] == [{"p": 4, "pos": 1}]
    assert [entry["p"] for entry in state["players"]] == [2, 3, 4]
    assert [(s.pid, s.figures["losses"]) for s in game.standings()][-1] == (1, 1)


def test_a_line_member_who_releases_just_leaves_the_line() -> None:
    game = started(players=4)
    game.release(3, 2000)
    state = game.state()
    assert state is not None
    assert state["line"] == [{"p": 4, "pos": 1}]
    assert (state["x"], state["o"], state["turn"]) == (1, 2, 1)
    assert game.drain_events() == []
    assert game.end_reason is None


def test_the_last_seat_holder_wins_when_the_other_releases() -> None:
    game = started(players=3)
    play(game, O_WINS_MIDDLE_ROW)  # 1 lost and waits; 2 and 3 play
    game.release(1, 3000)
    game.release(3, 4000)
    assert game.end_reason == "last_player"
    assert kinds(game.drain_events())[-1] == "board_over"
    standings = game.standings()
    assert [(s.pid, s.rank) for s in standings] == [(2, 1), (1, 2), (3, 2)]


def test_an_away_player_keeps_their_seat_and_their_turn_clock_runs() -> None:
    game = started(players=3, options=TicTacToeOptions(turn_ms=5000))
    game.away(1, 2000)
    assert game.state() is None and game.end_reason is None
    game.advance(6000)
    assert game.drain_events()[0].body == {
        "kind": "board_over", "winner": 2, "loser": 1, "draw": False, "reason": "timeout"}
    assert view(game)["line"] == [{"p": 1, "pos": 1}]
    game.join(1, "p1", 7000)  # back: still first in line, nothing else changed
    assert view(game)["line"] == [{"p": 1, "pos": 1}]


def test_a_returning_line_member_keeps_their_place() -> None:
    game = started(players=4)
    game.away(3, 2000)
    game.join(5, "p5", 2500)
    game.join(3, "p3", 3000)
    state = game.state()
    assert state is not None
    assert state["line"] == [{"p": 3, "pos": 1}, {"p": 4, "pos": 2}, {"p": 5, "pos": 3}]


def test_players_joining_after_the_start_go_to_the_back_of_the_line_and_are_ranked() -> None:
    game = started()
    game.join(3, "cat", 2000)
    game.join(4, "dan", 2100)
    state = game.state()
    assert state is not None
    assert state["line"] == [{"p": 3, "pos": 1}, {"p": 4, "pos": 2}]
    assert [entry["name"] for entry in state["players"]] == ["p1", "p2", "cat", "dan"]
    play(game, X_WINS_TOP_ROW)
    assert view(game)["o"] == 3
    assert [s.pid for s in game.standings()] == [1, 3, 4, 2]


def test_a_player_who_left_before_the_start_is_not_in_the_match() -> None:
    game = new_game()
    for pid in (1, 2, 3):
        game.join(pid, f"p{pid}", 0)
    game.release(1, 10)
    game.start(1000)
    state = view(game)
    assert (state["x"], state["o"]) == (2, 3)
    assert [s.pid for s in game.standings()] == [2, 3]


# -- results and state ------------------------------------------------------------------------------

def test_standings_rank_by_wins_then_losses_share_ties_and_score_3_a_win_1_a_draw() -> None:
    game = started(players=4, options=TicTacToeOptions(boards=4))
    play(game, X_WINS_TOP_ROW)  # 1 beats 2; 3 in as O
    play(game, DRAW)  # 1 leaves (longer); 4 in as X
    play(game, O_WINS_MIDDLE_ROW)  # 3 beats 4; 2 in as X
    play(game, DRAW)  # 3 draws again
    assert game.end_reason == "boards"
    assert game.standings() == [
        Standing(1, 1, 4, {"wins": 1, "losses": 0, "draws": 1}),
        Standing(3, 1, 5, {"wins": 1, "losses": 0, "draws": 2}),
        Standing(2, 3, 1, {"wins": 0, "losses": 1, "draws": 1}),
        Standing(4, 3, 0, {"wins": 0, "losses": 1, "draws": 0}),
    ]


def test_state_is_none_when_nothing_changed() -> None:
    game = new_game()
    assert game.state() is not None
    assert game.state() is None
    game.join(1, "ann", 0)
    assert game.state() is not None
    game.away(1, 10)
    game.join(1, "ann", 20)
    assert game.state() is None
    game.join(2, "bob", 30)
    game.start(100)
    assert game.state() is not None
    assert game.state() is None
    game.advance(200)
    assert game.state() is None
    game.handle(1, Move(4), 300)
    assert game.state() is not None
    assert game.state() is None


def test_welcome_gives_the_options_and_the_board_as_it_is() -> None:
    game = started(options=TicTacToeOptions(turn_ms=9000, boards=7))
    game.handle(1, Move(4), 2000)
    welcome = game.welcome(2)
    assert welcome["turn_ms"] == 9000 and welcome["boards"] == 7
    assert welcome["view"]["board"][4] == "X" and welcome["view"]["turn"] == 2
    assert not {"type", "tick", "t", "you", "state", "players"} & set(welcome)


# -- snapshots and determinism ----------------------------------------------------------------------

def script(game: TicTacToe, start: int, stop: int) -> list[Any]:
    """Steps `start` to `stop` of a fixed match with a line, refusals, a timeout, leavers and a latecomer: what
    each step showed, then the result so far."""
    steps: list[tuple[int, str, int, int]] = [
        (1000, "move", 1, 4), (1500, "move", 2, 0), (2000, "move", 1, 8), (2600, "join", 5, 0),
        (3000, "move", 2, 2), (3100, "move", 1, 1), (3500, "move", 2, 6), (3900, "move", 1, 7),  # 1 wins, 3 in as O
        (4000, "move", 3, 4), (30_000, "advance", 0, 0),  # 1 runs out of time; 4 comes in as X
        (30_500, "move", 4, 0), (31_000, "release", 1, 0), (31_500, "move", 3, 4), (32_000, "move", 4, 4),
        (32_100, "move", 4, 1), (33_000, "release", 3, 0), (34_000, "move", 4, 4), (35_000, "move", 2, 2),
    ]
    seen: list[Any] = []
    for now, what, pid, cell in steps[start:stop]:
        code = None
        try:
            if what == "move":
                game.handle(pid, Move(cell), now)
            elif what == "join":
                game.join(pid, f"p{pid}", now)
            elif what == "release":
                game.release(pid, now)
            game.advance(now)
        except Refused as refused:
            code = refused.code
        seen.append((code, game.state(), [(e.body, e.to, e.record) for e in game.drain_events()],
                     game.next_wake_ms()))
    seen.append((game.end_reason, game.standings(), game.clock_ms))
    return seen


def scripted_game() -> TicTacToe:
    game = new_game(TicTacToeOptions(turn_ms=20_000, boards=6), time_limit_ms=600_000)
    for pid in (1, 2, 3, 4):
        game.join(pid, f"p{pid}", 0)
    game.start(500)
    return game


def test_snapshot_and_restore_mid_match_play_on_identically() -> None:
    whole = script(scripted_game(), 0, 18)
    for cut in (3, 9, 11, 14):
        game = scripted_game()
        head = script(game, 0, cut)
        assert head[:-1] == whole[:cut]
        saved = orjson.loads(orjson.dumps(game.snapshot()))
        assert {entry["pid"] for entry in saved["players"]} == {1, 2, 3, 4} | ({5} if cut > 3 else set())
        restored = new_game(TicTacToeOptions(turn_ms=20_000, boards=6), time_limit_ms=600_000)
        restored.restore(saved)
        assert restored.snapshot() == game.snapshot()
        assert restored.state() == view(game)
        assert restored.clock_ms == game.clock_ms and restored.next_wake_ms() == game.next_wake_ms()
        assert script(restored, cut, 18) == script(game, cut, 18)


def test_restored_players_are_away_until_they_join_and_keep_their_seat() -> None:
    game = started(players=3)
    game.handle(1, Move(4), 2000)
    restored = new_game()
    restored.restore(orjson.loads(orjson.dumps(game.snapshot())))
    assert restored.state() is not None
    for pid in (1, 2, 3):
        restored.join(pid, f"p{pid}", 3000)
    assert restored.state() is None  # everyone back where they were
    assert view(restored) == view(game)
    restored.handle(2, Move(0), 3500)
    assert view(restored)["board"][0] == "O"


def test_a_snapshot_of_another_version_is_refused() -> None:
    game = started()
    saved = game.snapshot() | {"v": 99}
    with pytest.raises(ValueError, match="version"):
        new_game().restore(saved)


def test_the_same_inputs_give_the_same_states() -> None:
    assert script(scripted_game(), 0, 18) == script(scripted_game(), 0, 18)


# -- the bot ----------------------------------------------------------------------------------------

def test_the_bot_takes_a_win_then_blocks_then_takes_the_center_then_a_random_free_cell() -> None:
    rng = random.Random(3)
    assert choose_cell(["X", "X", "", "O", "O", "", "", "", ""], "O", rng) == 5  # its own win first
    assert choose_cell(["X", "X", "", "", "O", "", "", "", ""], "O", rng) == 2  # else block
    assert choose_cell(["X", "", "", "", "", "", "", "", ""], "O", rng) == 4  # else the center
    picks = {choose_cell(["", "", "", "", "X", "", "", "", ""], "O", random.Random(seed)) for seed in range(40)}
    assert picks == {0, 1, 2, 3, 5, 6, 7, 8}


def test_the_bot_moves_once_on_its_own_turn_150_to_600_ms_after_seeing_it() -> None:
    delays: set[int] = set()
    for seed in range(30):
        bot = TicTacToeBot(random.Random(seed))
        bot.on_message({"type": "welcome", "you": 2}, 0)
        state = {"type": "state", "tick": 1, "t": 1000, "board": ["X", "", "", "", "", "", "", "", ""], "x": 1,
                 "o": 2, "turn": 2, "turn_ends_ms": 21_000, "board_no": 1, "line": [], "players": []}
        assert bot.on_message(state, 1000) == []
        bot.on_message(state | {"tick": 2}, 1050)  # the same turn again: still one move, same time
        sent = [(now, message) for now in range(1000, 2000) for message in bot.on_tick(now)]
        assert len(sent) == 1
        sent_at, move = sent[0]
        assert move == {"type": "move", "cell": 4}  # the center: nothing to win or block yet
        assert 1150 <= sent_at <= 1600
        delays.add(sent_at - 1000)
        bot.on_message(state | {"tick": 3}, sent_at)
        assert all(bot.on_tick(now) == [] for now in range(sent_at, sent_at + 2000))
    assert len(delays) > 5


def test_the_bot_sends_nothing_for_a_turn_that_is_not_its_own_or_has_gone() -> None:
    bot = TicTacToeBot(random.Random(1))
    bot.on_message({"type": "welcome", "you": 3}, 0)
    state = {"type": "state", "board": [""] * 9, "x": 1, "o": 2, "turn": 1, "board_no": 1}
    bot.on_message(state, 0)
    assert all(bot.on_tick(now) == [] for now in range(0, 2000, 10))
    bot = TicTacToeBot(random.Random(1))
    bot.on_message({"type": "welcome", "you": 1}, 0)
    bot.on_message(state, 0)
    bot.on_message(state | {"turn": 2}, 100)  # ran out of time before sending
    assert all(bot.on_tick(now) == [] for now in range(0, 2000, 10))


class Host:
    """Plays the server's part: JSON both ways, a simulated room clock, states and events to every bot."""

    def __init__(self, game: TicTacToe, seed: int) -> None:
        self.game = game
        self.seed = seed
        self.bots: dict[int, TicTacToeBot] = {}
        self.connected: set[int] = set()
        self.now = 0
        self.tick = 0
        self.refused: list[tuple[int, str]] = []
        self.sent = 0
        self.transcript: list[bytes] = []
        self.result: dict[str, Any] | None = None

    def join(self, pid: int) -> None:
        self.game.join(pid, f"bot{pid}", self.now)
        self.bots.setdefault(pid, TicTacToeBot(random.Random(self.seed * 100 + pid)))
        self.connected.add(pid)
        self.deliver(pid, {"type": "welcome", "you": pid, **self.game.welcome(pid)})
        self.flush()

    def away(self, pid: int) -> None:
        self.connected.discard(pid)
        self.game.away(pid, self.now)
        self.flush()

    def release(self, pid: int) -> None:
        self.connected.discard(pid)
        self.game.release(pid, self.now)
        self.flush()

    def deliver(self, pid: int, message: dict[str, Any]) -> None:
        wire = orjson.loads(orjson.dumps(message))
        self.receive(pid, self.bots[pid].on_message(wire, self.now))

    def broadcast(self, message: dict[str, Any], to: int | None = None) -> None:
        self.transcript.append(orjson.dumps(message))
        for pid in sorted(self.connected):
            if to is None or to == pid:
                self.deliver(pid, message)

    def receive(self, pid: int, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            decoded = msgspec.json.decode(orjson.dumps(message), type=Move)
            self.sent += 1
            try:
                self.game.handle(pid, decoded, self.now)
            except Refused as refused:
                self.refused.append((pid, refused.code))
                self.deliver(pid, {"type": "error", "code": refused.code, "message": refused.message})
            self.game.advance(self.now)
            self.flush()

    def flush(self) -> None:
        state = self.game.state()
        if state is not None:
            self.tick += 1
            self.broadcast({"type": "state", "tick": self.tick, "t": self.now, **state})
        for event in self.game.drain_events():
            self.broadcast({"type": "event", **event.body}, event.to)
        if self.game.end_reason is not None and self.result is None:
            self.result = {"type": "match_end", "reason": self.game.end_reason, "duration_ms": self.game.clock_ms,
                           "ranking": [{"p": s.pid, "rank": s.rank, "score": s.score, **s.figures}
                                       for s in self.game.standings()]}
            self.broadcast(self.result)

    def run(self, until_ms: int, step_ms: int = 10) -> None:
        while self.now < until_ms and self.result is None:
            self.now += step_ms
            wake = self.game.next_wake_ms()
            if wake is not None and self.now >= wake:
                self.game.advance(self.now)
                self.flush()
            for pid in sorted(self.connected):
                self.receive(pid, self.bots[pid].on_tick(self.now))


def bot_match(seed: int, options: TicTacToeOptions, time_limit_ms: int = 0, players: int = 4) -> Host:
    host = Host(new_game(options, time_limit_ms), seed)
    for pid in range(1, players + 1):
        host.join(pid)
    host.game.start(host.now)
    host.flush()
    return host


def test_bots_play_a_whole_match_with_a_line_through_json_without_a_refusal() -> None:
    host = bot_match(7, TicTacToeOptions(turn_ms=5000, boards=30))
    host.run(60_000)
    host.join(5)  # a latecomer to the back of the line
    host.run(10 * 60_000)
    assert host.result is not None and host.result["reason"] == "boards"
    assert host.refused == [] and host.sent > 30 * 5
    ranking = host.result["ranking"]
    assert [row["p"] for row in ranking] and {row["p"] for row in ranking} == {1, 2, 3, 4, 5}
    assert sum(row["wins"] + row["draws"] / 2 for row in ranking) == 30  # every board won or drawn, none lost on time
    assert sum(row["wins"] for row in ranking) == sum(row["losses"] for row in ranking)
    assert host.game.next_wake_ms() is None


def test_bots_play_on_around_an_away_player_until_the_time_limit() -> None:
    host = bot_match(11, TicTacToeOptions(turn_ms=3000), time_limit_ms=120_000, players=3)
    host.run(20_000)
    host.away(2)  # never comes back: their turns run out while the others play
    host.run(70_000)
    host.release(3)
    host.run(10 * 60_000)
    assert host.result is not None and host.result["reason"] == "time"
    assert host.result["duration_ms"] == 120_000
    assert host.refused == []
    timeouts = [line for line in host.transcript if b'"reason":"timeout"' in line]
    assert timeouts and all(b'"loser":2' in line for line in timeouts)


def test_bots_left_alone_end_the_match_last_player() -> None:
    host = bot_match(5, TicTacToeOptions(), players=2)
    host.run(5000)
    host.release(1)
    assert host.result is not None and host.result["reason"] == "last_player"
    assert host.result["ranking"][0]["p"] == 2


def test_a_bot_match_replays_identically_from_the_same_seed() -> None:
    first = bot_match(3, TicTacToeOptions(turn_ms=4000, boards=12))
    first.run(10 * 60_000)
    second = bot_match(3, TicTacToeOptions(turn_ms=4000, boards=12))
    second.run(10 * 60_000)
    assert first.transcript == second.transcript and first.result is not None
