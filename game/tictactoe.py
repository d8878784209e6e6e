"""Tic-tac-toe with a waiting line ("king of the hill"): two players hold X and O, the others wait in arrival order;
the loser of each board goes to the back of the line and the first in line takes the free marker.
"""

from __future__ import annotations

import random
from typing import Annotated

import msgspec

from game.api import (
    EVENT_DRIVEN,
    Event,
    Forming,
    GameContext,
    GameDefinition,
    Json,
    Message,
    Refused,
    Seats,
    Standing,
)

SNAPSHOT_VERSION = 1  # the layout of `TicTacToe.snapshot`; a restore refuses any other
MARKS = ("X", "O")  # X always moves first on a new board
LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))


class TicTacToeOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The operator's options for `tictactoe` rooms."""

    turn_ms: Annotated[int, msgspec.Meta(ge=2000, le=300_000)] = 20_000  # running out forfeits the board
    boards: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0  # the match ends after this many boards; 0: never


class Move(Message, tag="move", frozen=True):
    """Put your marker on `cell` (0–8, row by row from the top left)."""

    cell: Annotated[int, msgspec.Meta(ge=0, le=8)]


class _Player:
    __slots__ = ("draws", "in_match", "losses", "name", "pid", "present", "seated", "streak", "wins")

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self.wins = 0
        self.losses = 0
        self.draws = 0
        self.streak = 0  # boards played since last taking a marker: who leaves on a draw
        self.present = True  # connected (an away player keeps their seat and their place)
        self.seated = True  # holds a seat: false once released, for good
        self.in_match = False  # held a seat once the match started: ranked

    def record(self) -> dict[str, Json]:
        return {"pid": self.pid, "name": self.name, "wins": self.wins, "losses": self.losses, "draws": self.draws,
                "streak": self.streak, "seated": self.seated, "in_match": self.in_match}


def winning_line(board: list[str]) -> tuple[int, int, int] | None:
    for line in LINES:
        a, b, c = line
        if board[a] and board[a] == board[b] == board[c]:
            return line
    return None


class TicTacToe:
    """One room's tic-tac-toe match (the `Game` protocol of `game.api`)."""

    def __init__(self, ctx: GameContext) -> None:
        options: TicTacToeOptions = ctx.options or TicTacToeOptions()
        self._turn_ms = options.turn_ms
        self._board_limit = options.boards
        self._time_limit_ms = max(ctx.time_limit_ms, 0)
        self._players: dict[int, _Player] = {}  # in join order
        self._line: list[int] = []
        self._holder: dict[str, int | None] = {"X": None, "O": None}
        self._board = [""] * 9
        self._turn: int | None = None
        self._deadline_ms: int | None = None  # room clock
        self._board_no = 0
        self._boards_done = 0
        self._started = False
        self._start_ms = 0
        self._now_ms = 0
        self._ends_ms: int | None = None  # room clock: the match's time limit
        self._end_reason: str | None = None
        self._last_player: int | None = None
        self._events: list[Event] = []
        self._dirty = True

    # -- players -----------------------------------------------------------------------------------

    def join(self, pid: int, name: str, now_ms: int) -> None:
        self.advance(now_ms)
        player = self._players.get(pid)
        if player is not None and player.seated:
            player.present = True  # a comeback: same seat, same marker or place in the line
            return
        if self._end_reason is not None:
            return
        if player is None:
            player = self._players[pid] = _Player(pid, name)
        player.seated = True
        player.present = True
        self._dirty = True
        if self._started:
            player.in_match = True
            self._line.append(pid)

    def away(self, pid: int, now_ms: int) -> None:
        self.advance(now_ms)
        player = self._players.get(pid)
        if player is not None:
            player.present = False

    def release(self, pid: int, now_ms: int) -> None:
        self.advance(now_ms)
        player = self._players.get(pid)
        if player is None or not player.seated:
            return
        player.seated = False
        player.present = False
        self._dirty = True
        if not self._started or self._end_reason is not None:
            return
        if pid in self._line:
            self._line.remove(pid)
            self._end_if_due()
            return
        mark = self._mark_of(pid)
        if mark is not None:
            self._holder[mark] = None
            self._finish_board(self._holder[_other(mark)], pid, "left", now_ms)

    # -- the match ---------------------------------------------------------------------------------

    def start(self, now_ms: int) -> None:
        if self._started:
            return
        self._started = True
        self._start_ms = self._now_ms = now_ms
        if self._time_limit_ms > 0:
            self._ends_ms = now_ms + self._time_limit_ms
        holders = [p.pid for p in self._players.values() if p.seated]
        for pid in holders:
            self._players[pid].in_match = True
        self._dirty = True
        if self._end_if_due():
            return
        self._line = holders
        self._fill_markers()
        self._new_board(now_ms)

    def handle(self, pid: int, message: Message, now_ms: int) -> None:
        if not isinstance(message, Move):
            raise TypeError(f"tictactoe has no message {type(message).__name__}")
        self.advance(now_ms)  # a move that comes after its turn ran out is too late
        if self._end_reason is not None:
            raise Refused("game_over", "the match is over")
        if not self._started:
            raise Refused("not_started", "the match has not started yet")
        mark = self._mark_of(pid)
        if mark is None:
            raise Refused("not_playing", "you are waiting in the line")
        if self._turn != pid:
            raise Refused("not_your_turn", "it is not your turn")
        cell = message.cell
        if self._board[cell]:
            raise Refused("cell_taken", f"cell {cell} is taken")
        self._board[cell] = mark
        self._dirty = True
        self._events.append(Event({"kind": "move", "p": pid, "cell": cell, "mark": mark}))
        other = self._holder[_other(mark)]
        if winning_line(self._board) is not None:
            self._finish_board(pid, other, "three", now_ms)
        elif all(self._board):
            self._finish_board(None, None, "draw", now_ms)
        else:
            self._turn = other
            self._deadline_ms = now_ms + self._turn_ms

    def advance(self, now_ms: int) -> None:
        if not self._started or self._end_reason is not None:
            return
        self._now_ms = max(self._now_ms, now_ms)
        deadline, ends = self._deadline_ms, self._ends_ms
        # A turn running out exactly when the match does: the match's time limit wins (the board stays unfinished).
        if deadline is not None and now_ms >= deadline and (ends is None or deadline < ends) and self._turn is not None:
            mark = self._mark_of(self._turn)
            assert mark is not None
            self._finish_board(self._holder[_other(mark)], self._turn, "timeout", now_ms)
        if ends is not None and now_ms >= ends and self._end_reason is None:
            self._now_ms = ends
            self._end("time")

    def next_wake_ms(self) -> int | None:
        if not self._started or self._end_reason is not None:
            return None
        times = [t for t in (self._deadline_ms, self._ends_ms) if t is not None]
        return min(times) if times else None

    def _finish_board(self, winner: int | None, loser: int | None, reason: str, now_ms: int) -> None:
        """Score the board, then rotate: the loser (on a draw, the longer active player) to the back of the line,
        the first in line to the free marker, and a new board, unless the match is over."""
        draw = reason == "draw"
        for mark in MARKS:
            holder = self._holder[mark]
            if holder is not None:
                player = self._players[holder]
                player.streak += 1
                if draw:
                    player.draws += 1
        if winner is not None:
            self._players[winner].wins += 1
        if loser is not None:
            self._players[loser].losses += 1
        self._events.append(Event({"kind": "board_over", "winner": winner, "loser": loser, "draw": draw,
                                   "reason": reason}))
        self._boards_done += 1
        self._turn = None
        self._deadline_ms = None
        self._dirty = True
        if self._end_if_due():
            return
        if draw:
            self._rotate_after_draw()
        elif loser is not None and reason != "left":  # who left is gone already
            self._send_to_line(loser)
        self._fill_markers()
        self._new_board(now_ms)

    def _rotate_after_draw(self) -> None:
        x, o = self._holder["X"], self._holder["O"]
        assert x is not None and o is not None
        goer = o if self._players[o].streak > self._players[x].streak else x
        if self._line:
            self._send_to_line(goer)
            return
        # The same two again: swapping markers lets the other one move first this time.
        self._holder["X"], self._holder["O"] = o, x
        self._players[goer].streak = 0
        self._events.append(Event({"kind": "seat", "p": o, "mark": "X"}))
        self._events.append(Event({"kind": "seat", "p": x, "mark": "O"}))

    def _send_to_line(self, pid: int) -> None:
        if not self._line:
            self._players[pid].streak = 0  # the back of an empty line is the front: straight back, same marker
            return
        mark = self._mark_of(pid)
        assert mark is not None
        self._holder[mark] = None
        self._line.append(pid)

    def _fill_markers(self) -> None:
        for mark in MARKS:
            if self._holder[mark] is None and self._line:
                pid = self._line.pop(0)
                self._holder[mark] = pid
                self._players[pid].streak = 0
                self._events.append(Event({"kind": "seat", "p": pid, "mark": mark}))

    def _new_board(self, now_ms: int) -> None:
        self._board = [""] * 9
        self._board_no += 1
        self._turn = self._holder["X"]
        self._deadline_ms = now_ms + self._turn_ms
        self._dirty = True

    def _end_if_due(self) -> bool:
        holders = [p.pid for p in self._players.values() if p.seated and p.in_match]
        if len(holders) < 2:
            self._last_player = holders[0] if holders else None
            self._end("last_player")
        elif self._board_limit and self._boards_done >= self._board_limit:
            self._end("boards")
        return self._end_reason is not None

    def _end(self, reason: str) -> None:
        self._end_reason = reason
        self._turn = None
        self._deadline_ms = None
        self._dirty = True

    def _mark_of(self, pid: int) -> str | None:
        for mark in MARKS:
            if self._holder[mark] == pid:
                return mark
        return None

    @property
    def clock_ms(self) -> int:
        return self._now_ms - self._start_ms if self._started else 0

    @property
    def end_reason(self) -> str | None:
        return self._end_reason

    # -- output ------------------------------------------------------------------------------------

    def welcome(self, pid: int) -> dict[str, Json]:
        # The board as it is now: an event-driven room sends no state until something changes.
        return {"turn_ms": self._turn_ms, "boards": self._board_limit, "view": self._view()}

    def state(self) -> dict[str, Json] | None:
        if not self._dirty:
            return None
        self._dirty = False
        return self._view()

    def _view(self) -> dict[str, Json]:
        return {"board": list(self._board), "x": self._holder["X"], "o": self._holder["O"], "turn": self._turn,
                "turn_ends_ms": self._deadline_ms, "board_no": self._board_no,
                "line": [{"p": pid, "pos": place} for place, pid in enumerate(self._line, 1)],
                "players": [{"p": p.pid, "name": p.name, "wins": p.wins, "losses": p.losses, "draws": p.draws}
                            for p in self._players.values() if p.seated]}

    def drain_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def standings(self) -> list[Standing]:
        """Most wins, then fewest losses, then join order; equal wins and losses share a rank. The one left of a
        `last_player` end comes first."""
        ranked = [p for p in self._players.values() if p.in_match]
        ranked.sort(key=lambda p: (-p.wins, p.losses))  # stable: join order among equals
        first_rank = 1
        result: list[Standing] = []
        if self._end_reason == "last_player" and self._last_player is not None:
            last = self._players[self._last_player]
            ranked.remove(last)
            result.append(_standing(last, 1))
            first_rank = 2
        rank = first_rank
        previous: tuple[int, int] | None = None
        for place, player in enumerate(ranked):
            if (player.wins, player.losses) != previous:
                rank = first_rank + place
                previous = (player.wins, player.losses)
            result.append(_standing(player, rank))
        return result

    # -- snapshots ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Json]:
        return {"v": SNAPSHOT_VERSION, "started": self._started, "start_ms": self._start_ms, "now_ms": self._now_ms,
                "ends_ms": self._ends_ms, "board": list(self._board), "x": self._holder["X"],
                "o": self._holder["O"], "turn": self._turn, "deadline_ms": self._deadline_ms,
                "board_no": self._board_no, "boards_done": self._boards_done, "line": list(self._line),
                "end_reason": self._end_reason, "last_player": self._last_player,
                "players": [p.record() for p in self._players.values()]}

    def restore(self, snapshot: dict[str, Json]) -> None:
        if snapshot.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"tictactoe snapshot version {snapshot.get('v')!r} is not {SNAPSHOT_VERSION}")
        if self._players:
            raise ValueError("restore needs a game without players")
        for entry in snapshot["players"]:
            player = _Player(int(entry["pid"]), str(entry["name"]))
            player.wins, player.losses, player.draws = int(entry["wins"]), int(entry["losses"]), int(entry["draws"])
            player.streak = int(entry["streak"])
            player.seated = bool(entry["seated"])
            player.in_match = bool(entry["in_match"])
            player.present = False  # away until `join` brings them back
            self._players[player.pid] = player
        self._started = bool(snapshot["started"])
        self._start_ms = int(snapshot["start_ms"])
        self._now_ms = int(snapshot["now_ms"])
        self._ends_ms = _opt_int(snapshot["ends_ms"])
        self._board = [str(cell) for cell in snapshot["board"]]
        self._holder = {"X": _opt_int(snapshot["x"]), "O": _opt_int(snapshot["o"])}
        self._turn = _opt_int(snapshot["turn"])
        self._deadline_ms = _opt_int(snapshot["deadline_ms"])
        self._board_no = int(snapshot["board_no"])
        self._boards_done = int(snapshot["boards_done"])
        self._line = [int(pid) for pid in snapshot["line"]]
        self._end_reason = None if snapshot["end_reason"] is None else str(snapshot["end_reason"])
        self._last_player = _opt_int(snapshot["last_player"])
        self._events = []
        self._dirty = True


def _other(mark: str) -> str:
    return "O" if mark == "X" else "X"


def _opt_int(value: Json) -> int | None:
    return None if value is None else int(value)


def _standing(player: _Player, rank: int) -> Standing:
    return Standing(player.pid, rank, 3 * player.wins + player.draws,
                    {"wins": player.wins, "losses": player.losses, "draws": player.draws})


class TicTacToeBot:
    """Plays from what a client sees: on its turn it takes a winning cell, else blocks the opponent's, else the
    center, else a random free cell, 150–600 ms after the state that gave it the turn; once per turn."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._me: int | None = None
        self._pending: tuple[int, int, tuple[int, int]] | None = None  # (send at, cell, turn key)
        self._moved: tuple[int, int] | None = None  # (board_no, marks on the board) of the last move sent
        self._over = False

    def on_message(self, message: dict[str, Json], now_ms: int) -> list[dict[str, Json]]:
        kind = message.get("type")
        if kind == "welcome":
            self._me = message.get("you")
            view = message.get("view")
            if isinstance(view, dict):
                self._see(view, now_ms)
        elif kind == "state":
            self._see(message, now_ms)
        elif kind == "match_end":
            self._over = True
            self._pending = None
        return []

    def on_tick(self, now_ms: int) -> list[dict[str, Json]]:
        if self._pending is None or now_ms < self._pending[0]:
            return []
        _, cell, key = self._pending
        self._pending = None
        self._moved = key
        return [{"type": "move", "cell": cell}]

    def _see(self, view: dict[str, Json], now_ms: int) -> None:
        board = view.get("board")
        if self._over or self._me is None or view.get("turn") != self._me or not isinstance(board, list):
            self._pending = None
            return
        key = (int(view.get("board_no") or 0), sum(1 for cell in board if cell))
        if key == self._moved or (self._pending is not None and self._pending[2] == key):
            return
        mark = "X" if view.get("x") == self._me else "O"
        cell = choose_cell([str(cell) for cell in board], mark, self._rng)
        self._pending = (now_ms + self._rng.randint(150, 600), cell, key)


def choose_cell(board: list[str], mark: str, rng: random.Random) -> int:
    """The bot's pick on a board with a free cell: win, else block, else center, else random."""
    for who in (mark, _other(mark)):
        for line in LINES:
            marks = [board[cell] for cell in line]
            if marks.count(who) == 2 and marks.count("") == 1:
                return line[marks.index("")]
    if not board[4]:
        return 4
    return rng.choice([cell for cell in range(9) if not board[cell]])


DEFINITION = GameDefinition(
    mode="tictactoe",
    title="Tic-tac-toe with a line",
    seats=Seats(min=2, max=2, line=8, backfill=True),
    forming=Forming.AT_ONCE,
    clock=EVENT_DRIVEN,
    messages=(Move,),
    make=TicTacToe,
    description="Three in a row wins the board; the loser goes to the back of the line, the first in line plays on.",
    figures=("wins", "losses", "draws"),
    options=TicTacToeOptions,
    bot=TicTacToeBot,
)
