"""Coinflip, a Tickroom game shipped in a package of its own: each round both players call heads or tails, the
server flips a coin, and every right call scores a point; the first to 3 points, ahead of the other, wins.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Literal

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

SNAPSHOT_FORMAT = 1  # the layout of `Coinflip.snapshot`; a restore refuses any other
SIDES = ("heads", "tails")


class CoinflipOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The operator's options (`TICKROOM_GAME_OPTIONS={"coinflip": {...}}`)."""

    points_to_win: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3


class Call(Message, frozen=True, tag="call"):
    """Call the coin of the current round. The host refuses any other `side` before the game sees it."""

    side: Literal["heads", "tails"]


@dataclass(slots=True)
class _Player:
    pid: int
    name: str
    points: int = 0  # right calls
    released: bool = False


class Coinflip:
    """One coinflip match behind the `game.api.Game` protocol."""

    def __init__(self, ctx: GameContext) -> None:
        self._rng = ctx.rng  # the only randomness: the host seeds it, and a snapshot keeps its state
        self._points_to_win = (ctx.options or CoinflipOptions()).points_to_win
        self._time_limit_ms = max(ctx.time_limit_ms, 0)
        self._players: dict[int, _Player] = {}  # in join order
        self._calls: dict[int, str] = {}  # this round's calls by pid: secret until the flip
        self._round = 0
        self._last: dict[str, Json] | None = None  # the last flip, as the state shows it
        self._started = False
        self._start_ms = self._now_ms = self._end_ms = 0
        self._end_reason: str | None = None
        self._events: list[Event] = []
        self._dirty = True  # the state changed since the last `state()`

    # -- seats: a returning player finds their points; nobody new joins a running match (no backfill) --

    def join(self, pid: int, name: str, now_ms: int) -> None:
        self.advance(now_ms)
        if pid not in self._players and not self._started:
            self._players[pid] = _Player(pid, name)
            self._dirty = True

    def away(self, pid: int, now_ms: int) -> None:
        self.advance(now_ms)  # the seat and the round wait for them (the host's reconnect grace)

    def release(self, pid: int, now_ms: int) -> None:
        self.advance(now_ms)
        player = self._players.get(pid)
        if player is None or player.released:
            return
        if not self._started:
            del self._players[pid]
        elif self._end_reason is None:  # once the match is over, its result stands
            player.released = True
            if sum(not p.released for p in self._players.values()) < 2:
                self._finish("last_player", now_ms)
        self._dirty = True

    # -- the match -----------------------------------------------------------------------------------

    def start(self, now_ms: int) -> None:
        self.advance(now_ms)
        if self._started:
            return
        self._started, self._start_ms, self._round, self._dirty = True, now_ms, 1, True
        if len(self._players) < 2:
            self._finish("last_player", now_ms)

    def handle(self, pid: int, message: Message, now_ms: int) -> None:
        assert isinstance(message, Call)  # the only schema: the host decoded it
        self.advance(now_ms)  # a time limit that passed before the call arrived ends the match first
        if not self._started:
            raise Refused("not_started", "the match has not started yet")
        if self._end_reason is not None:
            raise Refused("game_over", "the match is over")
        if pid in self._calls:
            raise Refused("already_called", f"you already called round {self._round}")
        self._calls[pid] = message.side
        self._dirty = True
        if len(self._calls) == len(self._players):  # two seats: a release ends the match, so everyone calls
            self._flip(now_ms)

    def _flip(self, now_ms: int) -> None:
        coin = self._rng.choice(SIDES)
        calls = {pid: self._calls[pid] for pid in self._players}  # join order
        right = [pid for pid, side in calls.items() if side == coin]
        for pid in right:
            self._players[pid].points += 1
        # JSON object keys are strings: calls by pid as "1", "2".
        self._last = {"round": self._round, "coin": coin, "calls": {str(pid): side for pid, side in calls.items()}}
        self._events.append(Event({"kind": "flip", **self._last, "right": right}, record=True))
        self._calls = {}
        best, other = sorted((p.points for p in self._players.values()), reverse=True)
        if best >= self._points_to_win and best > other:  # a tie at the target plays on
            self._finish("won", now_ms)
        else:
            self._round += 1

    def advance(self, now_ms: int) -> None:
        self._now_ms = max(self._now_ms, now_ms)
        wake = self.next_wake_ms()
        if wake is not None and now_ms >= wake:
            self._finish("time", wake)

    def next_wake_ms(self) -> int | None:
        # Rounds have no deadline: only the match's time limit, if the operator set one.
        if not self._started or self._end_reason is not None or not self._time_limit_ms:
            return None
        return self._start_ms + self._time_limit_ms

    def _finish(self, reason: str, at_ms: int) -> None:
        self._end_reason, self._end_ms, self._dirty = reason, at_ms, True

    @property
    def clock_ms(self) -> int:
        if not self._started:
            return 0
        return (self._end_ms if self._end_reason is not None else self._now_ms) - self._start_ms

    @property
    def end_reason(self) -> str | None:
        return self._end_reason

    # -- what the players see ------------------------------------------------------------------------

    def welcome(self, pid: int) -> dict[str, Json]:
        return {"points_to_win": self._points_to_win}  # the host sends the latest state right after

    def state(self) -> dict[str, Json] | None:
        if not self._dirty:
            return None
        self._dirty = False
        calling = self._started and self._end_reason is None
        return {"round": self._round,
                "to_call": [pid for pid in self._players if calling and pid not in self._calls],
                "players": [{"p": p.pid, "name": p.name, "points": p.points} for p in self._players.values()],
                "last": self._last}

    def drain_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def standings(self) -> list[Standing]:
        """Players who stayed before those who left, then by points; equals share a rank. A win (rank 1 alone
        once the match is over) scores 1: the leaderboard counts wins. The host reads standings during the match
        too (a live leaderboard), so a lead is not a win until the end."""
        def key(p: _Player) -> tuple[bool, int]:
            return p.released, -p.points

        players = sorted(self._players.values(), key=key)
        ranks = [1 + sum(key(q) < key(p) for q in players) for p in players]
        won = self._end_reason is not None and ranks.count(1) == 1
        return [Standing(p.pid, rank, int(won and rank == 1), {"correct": p.points})
                for p, rank in zip(players, ranks, strict=True)]

    # -- crash recovery ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Json]:
        version, internal, gauss_next = self._rng.getstate()
        return {"format": SNAPSHOT_FORMAT, "started": self._started, "start_ms": self._start_ms,
                "now_ms": self._now_ms, "end_ms": self._end_ms, "end_reason": self._end_reason,
                "round": self._round, "last": self._last, "calls": [[pid, side] for pid, side in self._calls.items()],
                "rng": [version, list(internal), gauss_next],  # the coins to come are the ones they would have been
                "players": [{"pid": p.pid, "name": p.name, "points": p.points, "released": p.released}
                            for p in self._players.values()]}

    def restore(self, snapshot: dict[str, Json]) -> None:
        if snapshot.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"coinflip snapshot format {snapshot.get('format')!r} is not {SNAPSHOT_FORMAT}")
        self._players = {int(p["pid"]): _Player(int(p["pid"]), str(p["name"]), int(p["points"]), bool(p["released"]))
                         for p in snapshot["players"]}
        self._calls = {int(pid): str(side) for pid, side in snapshot["calls"]}
        version, internal, gauss_next = snapshot["rng"]
        self._rng.setstate((int(version), tuple(int(word) for word in internal), gauss_next))
        self._started, self._round, self._last = bool(snapshot["started"]), int(snapshot["round"]), snapshot["last"]
        self._start_ms, self._now_ms = int(snapshot["start_ms"]), int(snapshot["now_ms"])
        self._end_ms, self._end_reason = int(snapshot["end_ms"]), snapshot["end_reason"]
        self._events, self._dirty = [], True


def make(ctx: GameContext) -> Game:
    return Coinflip(ctx)


class CoinflipBot:
    """Calls a random side once per round, as soon as a state shows it among those still to call."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._me: int | None = None
        self._called_round = 0  # rounds only grow: never a second call in one

    def on_message(self, message: dict[str, Json], now_ms: int) -> list[dict[str, Json]]:
        if message.get("type") == "welcome":
            self._me = message.get("you")
        elif message.get("type") == "state" and self._me in message.get("to_call", ()):
            if message["round"] > self._called_round:
                self._called_round = message["round"]
                return [{"type": "call", "side": self._rng.choice(SIDES)}]
        return []

    def on_tick(self, now_ms: int) -> list[dict[str, Json]]:
        return []


DEFINITION = GameDefinition(
    mode="coinflip",
    title="Coinflip: call the coin",
    seats=Seats(min=2, max=2),
    forming=Forming.AT_ONCE,
    clock=EVENT_DRIVEN,
    messages=(Call,),
    make=make,
    description="Both players call heads or tails, the server flips; first to 3 right calls, ahead, wins.",
    figures=("correct",),
    options=CoinflipOptions,
    bot=CoinflipBot,
)
