"""The small interface through which a game plugs into the room runner.

A game is a plain object driven synchronously with a fixed dt and a seeded RNG; it never
reads a clock, never awaits and never touches the network.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# A JSON-ready value: what the runner encodes with orjson, once per tick for the whole room.
Json = Any


@dataclass(frozen=True, slots=True)
class RankEntry:
    """One line of a final ranking."""

    pid: int
    rank: int
    kills: int
    deaths: int
    score: int


class Game(Protocol):
    """What the room runner needs from a game.

    Players are named by `pid`, a small integer the runner assigns in join order (1, 2, 3...).
    A pid is never reused within one game, so a returning player keeps theirs.
    """

    def add_player(self, pid: int) -> None:
        """Seat a new player, or reactivate a pid that left earlier (keeping their stats)."""

    def remove_player(self, pid: int) -> None:
        """The player's connection is gone: they stop acting and being hit, but stay in the ranking and keep
        their seat (they may come back within the reconnect grace: `add_player` again)."""

    def release_seat(self, pid: int) -> None:
        """The player gave their seat up (`leave`, or the reconnect grace ran out): they will not come back.
        Only this counts toward "everyone else left": a running match in which one player still holds a seat
        ends ("last_player") once that player is connected."""

    def start(self) -> None:
        """Begin the match: reset scores, place every active player, start the match clock.

        Before `start` the game is in warm-up: players move, but fire and scoring are off.
        """

    def set_input(self, pid: int, seq: int, dx: float, dy: float) -> None:
        """Latest movement direction for a player; dx, dy already validated to be finite in [-1, 1]."""

    def fire(self, pid: int, seq: int, angle: float) -> None:
        """A fire request (angle in radians, finite); the game applies its own rate limit."""

    def step(self, dt: float) -> None:
        """Advance the simulation by dt seconds."""

    def players_state(self) -> list[Json]:
        """Per active player entry for the `state` message (must include `p` and `seq`)."""

    def projectiles_state(self) -> list[Json]:
        """Per projectile entry for the `state` message."""

    def drain_events(self) -> list[dict[str, Json]]:
        """Events produced since the last call (hit, kill, respawn), as `event` message bodies."""

    @property
    def clock_ms(self) -> int:
        """Milliseconds of match time elapsed since `start` (0 in warm-up)."""

    @property
    def end_reason(self) -> str | None:
        """None while the match goes on; else why it ended ("kills", "time", "last_player")."""

    def ranking(self) -> list[RankEntry]:
        """Final ranking, best first; ties share a rank."""

    def snapshot(self) -> dict[str, Json]:
        """What a room restored after a crash needs, as JSON: the match clock and every player's state (by
        pid). In-flight projectiles and inputs are not kept."""

    def restore(self, snapshot: dict[str, Json]) -> None:
        """Take the state `snapshot` describes, on a game just built (no player yet). Every player comes back
        inactive, as after a leave: `add_player` reactivates them with their stats, hp and position."""


# Builds a game for one room; the runner passes a seeded RNG.
GameFactory = Callable[[random.Random], Game]
