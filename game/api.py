"""The contract between Tickroom's room host and a game: what a game declares (`GameDefinition`) and what it
implements (`Game`, and optionally a `BotPolicy`). A game is pure: it never reads a clock, never awaits and
never touches the network; the host hands it the time, a seeded RNG, and only messages its schemas accept.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import msgspec

# A JSON-ready value: what the host encodes with orjson (or msgspec), once per audience.
Json = Any
# One figure of a player's result (kills, WPM, rounds won...): a number, stored with the result in Postgres.
Figure = int | float


class Message(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=False):
    """Base of a game's client messages. Subclass it once per message type with `frozen=True, tag="name"` (the
    `type` on the wire) and typed fields constrained with `msgspec.Meta` (ranges, lengths); the host decodes every frame
    straight into one of them, answering `bad_field` / `out_of_range` / `text_too_long` naming the field before
    the game sees anything. Unknown fields are ignored (clients may be newer than the server)."""


class Refused(Exception):
    """A game's refusal of a well-formed message that its rules do not allow now (not your turn, board cell
    taken): the player gets `{"type": "error", "code": code, "message": message}` and stays connected. `code`
    is the game's own (documented in its section of docs/protocol.md), lower_snake_case."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Forming(enum.StrEnum):
    """How the lobby forms a room of this game."""

    COUNTDOWN = "countdown"  # at `seats.min` players a countdown starts; at `seats.max` the match starts at once
    FULL = "full"  # the match starts only when every seat is taken
    AT_ONCE = "at_once"  # the match starts as soon as `seats.min` players are in


@dataclass(frozen=True, slots=True)
class Seats:
    """Who may be in a room: `min` to `max` players (a running game has them all), plus up to `line` more who
    wait their turn and watch (tic-tac-toe's line). With `backfill`, a running room takes newcomers from the
    lobby into its free places (a line, a relay room); without, its players are those it started with."""

    min: int
    max: int
    line: int = 0
    backfill: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max or self.line < 0:
            raise ValueError(f"seats must be 1 <= min <= max and line >= 0, not {self}")

    @property
    def capacity(self) -> int:
        """How many people a room holds: its players and its line."""
        return self.max + self.line


@dataclass(frozen=True, slots=True)
class Clock:
    """How the host steps a game: a fixed tick rate (`hz`), or event-driven (`hz` None): stepped only when a
    message arrives or when the time it asked for (`Game.next_wake_ms`) comes; an idle room then costs nothing."""

    hz: float | None

    @property
    def event_driven(self) -> bool:
        return self.hz is None

    @property
    def interval_ms(self) -> float | None:
        return None if self.hz is None else 1000.0 / self.hz


EVENT_DRIVEN = Clock(None)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, sent as `{"type": "event", **body}` (`body` has a `kind`): to everyone in the
    room (`to` None: the players, those waiting their turn in a game's line, and the host's spectators) or to one
    player only (`to` = their pid: what only they may see; a game shows its line's watchers something of their own
    the same way, each by pid). Spectators see exactly what everyone sees. With `record`, it is also kept in
    Postgres, in the match's event log, numbered by the host in the order the game produced it (`match_events`: a
    dice game's rolls); the numbering goes on from the snapshot after a crash, and what a crashed host recorded
    past that snapshot is replaced, so the log holds each event of the match that went on exactly once."""

    body: dict[str, Json]
    to: int | None = None
    record: bool = False


@dataclass(frozen=True, slots=True)
class Standing:
    """A player's line of the final result: `rank` (1 is best; ties share a rank), `score` (what the per-mode
    leaderboard adds up), and the game's own `figures` (kills and deaths; WPM and accuracy; rounds won)."""

    pid: int
    rank: int
    score: int
    figures: Mapping[str, Figure] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GameContext:
    """What the host gives a game it builds: a seeded RNG (the game's only randomness), the match's time limit
    in ms (the operator's `TICKROOM_MATCH_TIME_S`; a game may ignore it), the operator's options for this
    game (`TICKROOM_GAME_OPTIONS`), already validated against the game's `options` schema, and, for a fixed-tick
    game, the tick period in ms the host steps it with (its clock's, or the operator's `TICKROOM_TICK_MS`): the
    `state` numbered `tick` N shows the game as `advance(round(N * tick_ms))` left it, so a game can tell which
    moment a client's message refers to (the arena's lag compensation). None: event-driven, or not said."""

    rng: random.Random
    time_limit_ms: int
    options: Any = None
    tick_ms: float | None = None


class Game(Protocol):
    """One room's game. Players are named by `pid`, a small integer the host gives in join order (1, 2, 3...)
    and never reuses within a room, so a returning player keeps theirs. Every call gets `now_ms`, the room clock:
    ms since the room was created, growing by exactly one tick interval a tick on a fixed-tick game, and with
    monotonic time on an event-driven one. It goes on across a crash (the host keeps it with the snapshot), so
    a game may keep deadlines as room-clock times. A call that raises closes the room (the others go on)."""

    def join(self, pid: int, name: str, now_ms: int) -> None:
        """A player takes a seat, or comes back to theirs (keeping what they had)."""

    def away(self, pid: int, now_ms: int) -> None:
        """The player's connection is gone; they keep their seat (the host's reconnect grace)."""

    def release(self, pid: int, now_ms: int) -> None:
        """The player gave their seat up (`leave`, or the reconnect grace ran out): they will not come back."""

    def start(self, now_ms: int) -> None:
        """The match begins (the lobby formed the room, or the countdown ended)."""

    def handle(self, pid: int, message: Message, now_ms: int) -> None:
        """A message of one of the game's schemas from a seated player; raise `Refused` if the rules say no."""

    def advance(self, now_ms: int) -> None:
        """Move the game on to `now_ms`: every tick on a fixed-tick game; on an event-driven one, when the time
        it asked for has come (and after the host delivered messages, before it reads the state)."""

    def next_wake_ms(self) -> int | None:
        """Event-driven games: the match-clock time at which `advance` must be called next (a turn's time
        limit), or None. Fixed-tick games: None."""

    def welcome(self, pid: int) -> dict[str, Json]:
        """Game-specific fields of the `welcome` a player gets on joining (the arena's size, a race's text)."""

    def state(self) -> dict[str, Json] | None:
        """What everyone in the room sees now, merged into `{"type": "state", "tick": N, "t": ms, ...}`: every
        tick on a fixed-tick game; after every change on an event-driven one. None: nothing changed since the
        last call (an event-driven game need not send the same state twice). The host keeps the previous state to
        send deltas against it: new lists and dicts each time, never one returned before changed in place."""

    def drain_events(self) -> list[Event]:
        """The events since the last call, oldest first."""

    @property
    def clock_ms(self) -> int:
        """Match time: ms since `start` (0 before)."""

    @property
    def end_reason(self) -> str | None:
        """None while the match goes on; else why it ended (`time`, `last_player`, or the game's own)."""

    def standings(self) -> list[Standing]:
        """The result, best first: every player who took a seat once the match started. Read during the match
        too (after each step that produced events), to add points to the mode's leaderboard as they are made:
        a score should only grow (a point that counts only if you win belongs to the end of the match)."""

    def snapshot(self) -> dict[str, Json]:
        """Everything needed to go on after a crash, as JSON (the host adds seats and roster). Under `players`,
        a list with one object per player that names its `pid`: Postgres keeps those rows per player."""

    def restore(self, snapshot: dict[str, Json]) -> None:
        """Take the state `snapshot` describes, on a game just built: the match is running, every player is
        away until `join` brings them back."""


class BotPolicy(Protocol):
    """How the headless bot (`tickroom bot --mode MODE`) plays the game: pure, like the game. The bot feeds it
    every message it receives (`welcome`, `state`, `event`, `error`, `match_end`...) and asks it at its input
    rate what to send; each answer is a list of client messages as dicts."""

    def on_message(self, message: dict[str, Json], now_ms: int) -> list[dict[str, Json]]:
        """React to a message from the server."""

    def on_tick(self, now_ms: int) -> list[dict[str, Json]]:
        """Called `input_hz` times a second (the bot's setting): what to send now, if anything."""


@dataclass(frozen=True, slots=True)
class GameDefinition:
    """One game, as a module declares it and the `tickroom.games` entry-point group names it."""

    mode: str  # the name clients join with: lower_snake_case, at most 32 characters
    title: str
    seats: Seats
    forming: Forming
    clock: Clock
    messages: Sequence[type[Message]]  # the client messages the game handles (besides the host's own)
    make: Callable[[GameContext], Game]
    description: str = ""
    figures: Sequence[str] = ()  # the names of the figures in its standings, in display order
    options: type[msgspec.Struct] | None = None  # the schema of its operator options, if it has any
    bot: Callable[[random.Random], BotPolicy] | None = None
    # Messages the host answers itself; a game may not define these.
    HOST_MESSAGES: ClassVar[frozenset[str]] = frozenset({"hello", "ping", "leave", "chat"})

    def __post_init__(self) -> None:
        if not (1 <= len(self.mode) <= 32 and self.mode.replace("_", "").isalnum() and self.mode.islower()):
            raise ValueError(f"mode {self.mode!r} must be 1 to 32 lower-case letters, digits and _")
        tags = [message_type(cls) for cls in self.messages]
        clash = sorted(set(tags) & self.HOST_MESSAGES)
        if clash:
            raise ValueError(f"game {self.mode!r} defines messages the host owns: {clash}")
        if len(set(tags)) != len(tags):
            raise ValueError(f"game {self.mode!r} defines a message type twice: {tags}")


def message_type(cls: type[Message]) -> str:
    """The `type` a message class has on the wire."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise ValueError(f"{cls.__name__} needs a string tag (class {cls.__name__}(Message, tag='name'))")
    return tag
