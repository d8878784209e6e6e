"""Dice, lowest roll loses: each round every player still in rolls once, the lowest loses a life (a tie for lowest
rolls off among the tied only), and the last player with lives left wins. Event-driven: a deadline rolls for anyone
who does not roll in time."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from game.api import (
    EVENT_DRIVEN,
    Event,
    Forming,
    Game,
    GameContext,
    GameDefinition,
    Json,
    Message,
    Refused,
    Seats,
    Standing,
)

SNAPSHOT_FORMAT = 1  # the layout of `DiceGame.snapshot`; a restore refuses any other
SCORE_PER_OUTLASTED = 10
BOT_DELAY_MS = (200, 1500)


class DiceOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The operator's options for dice matches."""

    lives: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3  # rounds a player may lose before being out
    sides: Annotated[int, msgspec.Meta(ge=2, le=100)] = 6
    roll_time_ms: Annotated[int, msgspec.Meta(ge=1000, le=120_000)] = 15_000  # then the server rolls for them


class Roll(Message, frozen=True, tag="roll"):
    """Roll your die for the current round or roll-off."""


@dataclass(slots=True)
class _Player:
    pid: int
    name: str
    rounds_lost: int = 0
    rolls: int = 0
    out_order: int = 0  # 0 while still in; else 1 for the first player out, 2 for the next...
    released: bool = False


@dataclass(slots=True)
class _Turn:
    """One throw of a round: its first throw (`rolloff` 0) or a roll-off among the players tied for lowest."""

    round: int
    rolloff: int
    to_roll: list[int]  # in join order
    deadline_ms: int  # room clock
    rolls: dict[int, int] = field(default_factory=dict)  # pid -> value, in the order rolled


class DiceGame:
    """One dice match behind the `game.api.Game` protocol."""

    def __init__(self, ctx: GameContext) -> None:
        self._rng = ctx.rng
        self._options: DiceOptions = ctx.options or DiceOptions()
        self._time_limit_ms = max(ctx.time_limit_ms, 0)
        self._players: dict[int, _Player] = {}  # in join order
        self._turn: _Turn | None = None
        self._started = False
        self._start_ms = 0
        self._now_ms = 0
        self._end_ms = 0
        self._end_reason: str | None = None
        self._version = 0  # of the last roll: the host records rolls under (match, v)
        self._out_count = 0
        self._last: dict[str, Json] | None = None
        self._events: list[Event] = []
        self._dirty = True

    # -- seats -------------------------------------------------------------------------------------

    def join(self, pid: int, name: str, now_ms: int) -> None:
        self._see(now_ms)
        if pid in self._players or self._started:
            return  # a returning player finds the game in their welcome; dice has no backfill after the start
        self._players[pid] = _Player(pid, name)
        self._dirty = True

    def away(self, pid: int, now_ms: int) -> None:
        # Nothing changes: the roll deadline rolls for an away player.
        self._see(now_ms)

    def release(self, pid: int, now_ms: int) -> None:
        self._catch_up(now_ms)
        player = self._players.get(pid)
        if player is None or player.released:
            return
        if not self._started:
            del self._players[pid]
            self._dirty = True
            return
        player.released = True
        if self._end_reason is not None or player.out_order:
            return  # the result stands; an out player has nothing left to lose
        turn = self._turn
        assert turn is not None
        self._eliminate(player, turn.round, released=True)
        if pid in turn.to_roll:
            turn.to_roll.remove(pid)
        turn.rolls.pop(pid, None)  # the round is decided among the players still in
        if len(self._still_in()) <= 1:
            self._finish("last_player", now_ms)
        elif not turn.to_roll:
            self._resolve(now_ms)

    # -- the match ---------------------------------------------------------------------------------

    def start(self, now_ms: int) -> None:
        self._see(now_ms)
        if self._started:
            return
        self._started = True
        self._start_ms = now_ms
        self._dirty = True
        if len(self._players) <= 1:
            self._finish("last_player", now_ms)
        else:
            self._start_round(1, now_ms)

    def handle(self, pid: int, message: Message, now_ms: int) -> None:
        # Every message is a `Roll`, the only schema. Deadlines that passed before it arrived are settled first,
        # so the outcome does not depend on whether the host called `advance` before or after delivering it.
        if not self._started:
            raise Refused("not_started", "the match has not started yet")
        self._catch_up(now_ms)
        if self._end_reason is not None:
            raise Refused("game_over", "the match is over")
        turn = self._turn
        if turn is None or pid not in turn.to_roll:
            raise Refused("not_your_roll", "you are not among those who must roll now")
        self._roll(pid, now_ms, auto=False)

    def advance(self, now_ms: int) -> None:
        self._catch_up(now_ms)

    def next_wake_ms(self) -> int | None:
        if not self._started or self._end_reason is not None:
            return None
        wakes = [self._turn.deadline_ms] if self._turn is not None else []
        if self._time_limit_ms:
            wakes.append(self._start_ms + self._time_limit_ms)
        return min(wakes, default=None)

    def _see(self, now_ms: int) -> None:
        self._now_ms = max(self._now_ms, now_ms)

    def _catch_up(self, now_ms: int) -> None:
        """Roll for everyone whose deadline passed, then end the match if its time is up, in that order when the
        deadline came first."""
        self._see(now_ms)
        if not self._started or self._end_reason is not None:
            return
        time_up_ms = self._start_ms + self._time_limit_ms if self._time_limit_ms else None
        turn = self._turn
        if turn is not None and turn.deadline_ms <= now_ms and (time_up_ms is None or turn.deadline_ms <= time_up_ms):
            for pid in list(turn.to_roll):
                self._roll(pid, now_ms, auto=True)
        if self._end_reason is None and time_up_ms is not None and now_ms >= time_up_ms:
            self._finish("time", time_up_ms)

    def _roll(self, pid: int, now_ms: int, auto: bool) -> None:
        turn = self._turn
        assert turn is not None
        value = self._rng.randint(1, self._options.sides)
        turn.to_roll.remove(pid)
        turn.rolls[pid] = value
        self._players[pid].rolls += 1
        self._version += 1
        self._events.append(Event({"kind": "roll", "p": pid, "value": value, "round": turn.round,
                                   "rolloff": turn.rolloff, "v": self._version, "auto": auto}, record=True))
        self._dirty = True
        if not turn.to_roll:
            self._resolve(now_ms)

    def _resolve(self, now_ms: int) -> None:
        """Everyone due has rolled: the single lowest loses the round, or the tied lowest roll off."""
        turn = self._turn
        assert turn is not None
        rolls = {pid: turn.rolls[pid] for pid in self._players if pid in turn.rolls}  # join order
        if not rolls:
            # Everyone due in this throw gave their seat up: leaving was their loss, the round has no other.
            self._last = {"round": turn.round, "loser": None, "rolls": {}}
            self._start_round(turn.round + 1, now_ms)
            return
        lowest_value = min(rolls.values())
        lowest = [pid for pid, value in rolls.items() if value == lowest_value]
        if len(lowest) > 1:
            self._turn = _Turn(turn.round, turn.rolloff + 1, lowest, now_ms + self._options.roll_time_ms)
            self._dirty = True
            self._events.append(Event({"kind": "rolloff", "round": turn.round, "rolloff": turn.rolloff + 1,
                                       "players": list(lowest)}))
            return
        loser = self._players[lowest[0]]
        loser.rounds_lost += 1
        lives_left = max(self._options.lives - loser.rounds_lost, 0)
        self._events.append(Event({"kind": "round_lost", "p": loser.pid, "round": turn.round,
                                   "lives_left": lives_left}))
        # JSON object keys are strings: rolls by pid as "1", "2"...
        self._last = {"round": turn.round, "loser": loser.pid,
                      "rolls": {str(pid): value for pid, value in rolls.items()}}
        if lives_left == 0:
            self._eliminate(loser, turn.round, released=False)
        if len(self._still_in()) <= 1:
            self._finish("winner", now_ms)
        else:
            self._start_round(turn.round + 1, now_ms)

    def _start_round(self, number: int, now_ms: int) -> None:
        self._turn = _Turn(number, 0, [p.pid for p in self._still_in()], now_ms + self._options.roll_time_ms)
        self._dirty = True

    def _eliminate(self, player: _Player, round_number: int, released: bool) -> None:
        self._out_count += 1
        player.out_order = self._out_count
        self._events.append(Event({"kind": "out", "p": player.pid, "round": round_number, "released": released}))
        self._dirty = True

    def _finish(self, reason: str, at_ms: int) -> None:
        self._end_reason = reason
        self._end_ms = at_ms
        self._dirty = True

    def _still_in(self) -> list[_Player]:
        return [p for p in self._players.values() if not p.out_order]

    @property
    def clock_ms(self) -> int:
        if not self._started:
            return 0
        return (self._end_ms if self._end_reason is not None else self._now_ms) - self._start_ms

    @property
    def end_reason(self) -> str | None:
        return self._end_reason

    # -- output ------------------------------------------------------------------------------------

    def welcome(self, pid: int) -> dict[str, Json]:
        # `view`: states are only sent on a change, so someone (re)joining a quiet room learns the game here.
        options = self._options
        return {"lives": options.lives, "sides": options.sides, "roll_time_ms": options.roll_time_ms,
                "view": self._view()}

    def state(self) -> dict[str, Json] | None:
        if not self._dirty:
            return None
        self._dirty = False
        return self._view()

    def _view(self) -> dict[str, Json]:
        turn = self._turn
        running = self._started and self._end_reason is None and turn is not None
        lives = self._options.lives
        throw = turn.rolls if turn is not None else {}
        return {"round": turn.round if turn is not None else 0,
                "rolloff": turn.rolloff if turn is not None else 0,
                "to_roll": list(turn.to_roll) if running and turn is not None else [],
                "deadline_ms": turn.deadline_ms if running and turn is not None else None,
                "v": self._version,
                "players": [{"p": p.pid, "name": p.name, "lives": max(lives - p.rounds_lost, 0),
                             "out": p.out_order > 0, "roll": throw.get(p.pid)} for p in self._players.values()],
                "last": self._last}

    def drain_events(self) -> list[Event]:
        events = self._events
        self._events = []
        return events

    def standings(self) -> list[Standing]:
        """Players still in by lives left (then join order), then the others, out later first; each scores for
        every player ranked below them, who they outlasted."""
        still_in = sorted(self._still_in(), key=lambda p: p.rounds_lost)  # stable: join order breaks ties
        out = sorted((p for p in self._players.values() if p.out_order), key=lambda p: -p.out_order)
        ranked = still_in + out
        return [Standing(p.pid, rank, SCORE_PER_OUTLASTED * (len(ranked) - rank),
                         {"rounds_lost": p.rounds_lost, "rolls": p.rolls})
                for rank, p in enumerate(ranked, start=1)]

    # -- snapshots ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Json]:
        turn = self._turn
        version, internal, gauss_next = self._rng.getstate()
        return {"format": SNAPSHOT_FORMAT, "started": self._started, "start_ms": self._start_ms,
                "now_ms": self._now_ms, "end_ms": self._end_ms, "end_reason": self._end_reason,
                "v": self._version, "out_count": self._out_count, "last": self._last,
                "turn": None if turn is None else {
                    "round": turn.round, "rolloff": turn.rolloff, "to_roll": list(turn.to_roll),
                    "deadline_ms": turn.deadline_ms, "rolls": [[pid, value] for pid, value in turn.rolls.items()]},
                # The dice to come must be the ones the crashed room would have rolled.
                "rng": [version, list(internal), gauss_next],
                "players": [{"pid": p.pid, "name": p.name, "rounds_lost": p.rounds_lost, "rolls": p.rolls,
                             "out_order": p.out_order, "released": p.released} for p in self._players.values()]}

    def restore(self, snapshot: dict[str, Json]) -> None:
        if snapshot.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"dice snapshot format {snapshot.get('format')!r} is not {SNAPSHOT_FORMAT}")
        if self._players:
            raise ValueError("restore needs a game without players")
        for entry in snapshot["players"]:
            player = _Player(int(entry["pid"]), str(entry["name"]), int(entry["rounds_lost"]), int(entry["rolls"]),
                             int(entry["out_order"]), bool(entry["released"]))
            self._players[player.pid] = player
        turn = snapshot["turn"]
        self._turn = None if turn is None else _Turn(
            int(turn["round"]), int(turn["rolloff"]), [int(pid) for pid in turn["to_roll"]], int(turn["deadline_ms"]),
            {int(pid): int(value) for pid, value in turn["rolls"]})
        version, internal, gauss_next = snapshot["rng"]
        self._rng.setstate((int(version), tuple(int(word) for word in internal), gauss_next))
        self._started = bool(snapshot["started"])
        self._start_ms = int(snapshot["start_ms"])
        self._now_ms = int(snapshot["now_ms"])
        self._end_ms = int(snapshot["end_ms"])
        self._end_reason = snapshot["end_reason"]
        self._version = int(snapshot["v"])
        self._out_count = int(snapshot["out_count"])
        self._last = snapshot["last"]
        self._events = []
        self._dirty = True


def make(ctx: GameContext) -> Game:
    return DiceGame(ctx)


class DiceBot:
    """Rolls once per throw it is due in, after a human-like pause (kept within half the roll time, so that the
    server never rolls for it first)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._me: int | None = None
        self._roll_time_ms = DiceOptions().roll_time_ms
        self._pending: tuple[tuple[int, int], int] | None = None  # (round, rolloff) to roll in, and when
        self._last_rolled = (0, 0)  # (round, rolloff) grows through a match: one roll per throw
        self._over = False

    def on_message(self, message: dict[str, Json], now_ms: int) -> list[dict[str, Json]]:
        kind = message.get("type")
        if kind == "welcome":
            self._me = message.get("you")
            roll_time_ms = message.get("roll_time_ms")
            if isinstance(roll_time_ms, int):
                self._roll_time_ms = roll_time_ms
            view = message.get("view")
            if isinstance(view, dict):
                self._see_view(view, now_ms)
        elif kind == "state":
            self._see_view(message, now_ms)
        elif kind == "match_end":
            self._over = True
            self._pending = None
        return []

    def _see_view(self, view: dict[str, Json], now_ms: int) -> None:
        if "to_roll" not in view:
            return
        throw = (int(view["round"]), int(view["rolloff"]))
        if self._over or self._me not in view["to_roll"] or throw <= self._last_rolled:
            self._pending = None
        elif self._pending is None or self._pending[0] != throw:
            low, high = BOT_DELAY_MS
            self._pending = (throw, now_ms + self._rng.randint(low, min(high, self._roll_time_ms // 2)))

    def on_tick(self, now_ms: int) -> list[dict[str, Json]]:
        if self._pending is None or now_ms < self._pending[1]:
            return []
        self._last_rolled = self._pending[0]
        self._pending = None
        return [{"type": "roll"}]


DEFINITION = GameDefinition(
    mode="dice",
    title="Dice: lowest roll loses",
    seats=Seats(min=2, max=6),
    forming=Forming.COUNTDOWN,
    clock=EVENT_DRIVEN,
    messages=(Roll,),
    make=make,
    description="Everyone rolls a die each round; the lowest roll loses a life (ties roll off). Last one in wins.",
    figures=("rounds_lost", "rolls"),
    options=DiceOptions,
    bot=DiceBot,
)
