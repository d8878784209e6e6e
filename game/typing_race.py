"""The typing race (mode `typing`): everyone types the same text, one `key` message a keystroke, and the order
in which they finish ranks them. Event-driven: the only deadline is the time limit.
"""

from __future__ import annotations

import random
import string
from typing import Annotated

import msgspec

from game.api import EVENT_DRIVEN, Event, Forming, GameContext, GameDefinition, Json, Message, Refused, Seats, Standing
from game.typing_words import WORDS

SNAPSHOT_VERSION = 1  # the layout of `TypingRace.snapshot`; a restore refuses any other


class TypingOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The operator's settings of a typing race."""

    words: Annotated[int, msgspec.Meta(ge=5, le=200)] = 25
    time_limit_ms: Annotated[int, msgspec.Meta(ge=10_000, le=600_000)] = 120_000


class KeyPress(Message, frozen=True, tag="key"):
    """One keystroke: the character the player typed."""

    c: Annotated[str, msgspec.Meta(min_length=1, max_length=1)]


class _Racer:
    """One player's progress. `pos` counts the characters typed right from the start of the text; `word` and
    `char` say the same thing per word (on the space after a word, `char` is that word's length)."""

    __slots__ = ("char", "connected", "errors", "finish_ms", "name", "pid", "place", "pos", "released_ms", "word")

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self.pos = 0
        self.word = 0
        self.char = 0
        self.errors = 0
        self.place: int | None = None
        self.finish_ms: int | None = None  # room clock
        self.released_ms: int | None = None  # room clock; set: out of the race for good
        self.connected = True

    @property
    def seated(self) -> bool:
        return self.released_ms is None

    def accuracy(self) -> float:
        keys = self.pos + self.errors
        return 1.0 if keys == 0 else round(self.pos / keys, 3)


def _wpm(chars: int, elapsed_ms: int) -> float:
    """Words per minute, a word being 5 characters; 0.0 when no time has passed."""
    if elapsed_ms <= 0:
        return 0.0
    return round(chars / 5 / (elapsed_ms / 60_000), 1)


class TypingRace:
    """One room's race behind the `game.api.Game` protocol."""

    def __init__(self, ctx: GameContext) -> None:
        options: TypingOptions = ctx.options or TypingOptions()
        limit = options.time_limit_ms
        if ctx.time_limit_ms > 0:
            limit = min(limit, ctx.time_limit_ms)
        self._limit_ms = limit
        self._words: list[str] = ctx.rng.choices(WORDS, k=options.words)
        self._text = " ".join(self._words)
        self._racers: dict[int, _Racer] = {}  # in join order
        self._events: list[Event] = []
        self._dirty = True
        self._now_ms = 0  # the latest room-clock time any call brought
        self._start_ms: int | None = None
        self._ends_ms: int | None = None
        self._end_ms: int | None = None
        self._end_reason: str | None = None
        self._finishers = 0

    # -- seats -------------------------------------------------------------------------------------

    def join(self, pid: int, name: str, now_ms: int) -> None:
        self._tick(now_ms)
        racer = self._racers.get(pid)
        if racer is None:
            racer = self._racers[pid] = _Racer(pid, name)
        racer.name = name
        racer.connected = True
        self._dirty = True  # a returning player needs the state now, even when nobody else's changed
        self._end_if_one_seat_left(now_ms)

    def away(self, pid: int, now_ms: int) -> None:
        self._tick(now_ms)
        racer = self._racers.get(pid)
        if racer is not None:
            racer.connected = False  # the state does not show connections: nothing to send

    def release(self, pid: int, now_ms: int) -> None:
        self._tick(now_ms)
        racer = self._racers.get(pid)
        if racer is None or not racer.seated:
            return
        self._dirty = True
        if self._start_ms is None:
            del self._racers[pid]  # gone before the match: not in it
            return
        racer.connected = False
        racer.released_ms = now_ms
        if self._end_reason is None and not self._end_if_one_seat_left(now_ms):
            self._end_if_all_finished(now_ms)

    def _end_if_one_seat_left(self, now_ms: int) -> bool:
        """All but one released their seats: the race ends ("last_player") once that one is connected, so
        that they see the end. Players merely away hold their seats and never make anyone the last."""
        if self._start_ms is None or self._end_reason is not None:
            return False
        holders = [racer for racer in self._racers.values() if racer.seated]
        if len(holders) == 1 and len(self._racers) > 1 and holders[0].connected:
            self._end("last_player", now_ms)
            return True
        return False

    def _end_if_all_finished(self, now_ms: int) -> None:
        holders = [racer for racer in self._racers.values() if racer.seated]
        if holders and all(racer.place is not None for racer in holders):
            self._end("finished", now_ms)

    # -- the race ----------------------------------------------------------------------------------

    def start(self, now_ms: int) -> None:
        self._tick(now_ms)
        if self._start_ms is not None:
            return
        self._start_ms = now_ms
        self._ends_ms = now_ms + self._limit_ms
        self._dirty = True

    def handle(self, pid: int, message: Message, now_ms: int) -> None:
        self._tick(now_ms)
        if not isinstance(message, KeyPress):
            raise TypeError(f"the typing race has no message {type(message).__name__}")
        if self._start_ms is None:
            raise Refused("not_started", "the race has not started yet")
        # A key at or past the time limit is too late even if `advance` has not been called for it yet.
        if self._end_reason is not None or (self._ends_ms is not None and now_ms >= self._ends_ms):
            raise Refused("game_over", "the race is over")
        racer = self._racers[pid]
        if racer.place is not None:
            raise Refused("finished", "you finished the text already")
        self._dirty = True
        expected = self._text[racer.pos]
        if message.c != expected:
            racer.errors += 1
            return
        racer.pos += 1
        if expected == " ":
            racer.word += 1
            racer.char = 0
        else:
            racer.char += 1
        if racer.pos == len(self._text):
            self._finish(racer, now_ms)

    def _finish(self, racer: _Racer, now_ms: int) -> None:
        assert self._start_ms is not None
        self._finishers += 1
        racer.place = self._finishers
        racer.finish_ms = now_ms
        elapsed = now_ms - self._start_ms
        self._events.append(Event({"kind": "finished", "p": racer.pid, "place": racer.place,
                                   "wpm": _wpm(racer.pos, elapsed), "accuracy": racer.accuracy(), "ms": elapsed}))
        self._end_if_all_finished(now_ms)

    def advance(self, now_ms: int) -> None:
        self._tick(now_ms)
        if self._end_reason is None and self._ends_ms is not None and now_ms >= self._ends_ms:
            self._end("time", self._ends_ms)

    def next_wake_ms(self) -> int | None:
        return self._ends_ms if self._end_reason is None else None

    def _end(self, reason: str, end_ms: int) -> None:
        self._end_reason = reason
        self._end_ms = end_ms

    def _tick(self, now_ms: int) -> None:
        if now_ms > self._now_ms:
            self._now_ms = now_ms

    @property
    def clock_ms(self) -> int:
        if self._start_ms is None:
            return 0
        end = self._end_ms if self._end_ms is not None else self._now_ms
        return max(0, end - self._start_ms)

    @property
    def end_reason(self) -> str | None:
        return self._end_reason

    # -- output ------------------------------------------------------------------------------------

    def welcome(self, pid: int) -> dict[str, Json]:
        return {"text": self._text, "words": list(self._words)}

    def state(self) -> dict[str, Json] | None:
        if not self._dirty:
            return None
        self._dirty = False
        return {"players": [{"p": r.pid, "name": r.name, "word": r.word, "char": r.char, "pos": r.pos,
                             "errors": r.errors, "finished": r.place is not None, "place": r.place}
                            for r in self._racers.values() if r.seated],
                "ends_ms": self._ends_ms, "length": len(self._text)}

    def drain_events(self) -> list[Event]:
        events = self._events
        self._events = []
        return events

    def standings(self) -> list[Standing]:
        """Finishers by place; then those still holding a seat, then those who released it, each by
        characters typed (equal ones share a rank, in join order)."""
        if self._start_ms is None:
            return []
        racers = list(self._racers.values())
        finishers = sorted((r for r in racers if r.place is not None), key=lambda r: r.place or 0)
        standings = [self._standing(racer, racer.place or 0) for racer in finishers]
        for group in ([r for r in racers if r.place is None and r.seated],
                      [r for r in racers if r.place is None and not r.seated]):
            first = len(standings) + 1
            rank = first
            previous: int | None = None
            for offset, racer in enumerate(sorted(group, key=lambda r: -r.pos)):
                if racer.pos != previous:
                    rank = first + offset
                    previous = racer.pos
                standings.append(self._standing(racer, rank))
        return standings

    def _standing(self, racer: _Racer, rank: int) -> Standing:
        assert self._start_ms is not None
        if racer.finish_ms is not None:
            stop = racer.finish_ms
        else:
            # Unfinished: typing until the race ended (or now, asked early), or until they released their seat.
            stop = self._end_ms if self._end_ms is not None else self._now_ms
            if racer.released_ms is not None:
                stop = min(stop, racer.released_ms)
        wpm = _wpm(racer.pos, stop - self._start_ms)
        finished = racer.place is not None
        return Standing(racer.pid, rank, round(wpm) if finished else round(wpm / 2),
                        {"wpm": wpm, "accuracy": racer.accuracy(), "finished": int(finished)})

    # -- snapshots ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Json]:
        return {"v": SNAPSHOT_VERSION, "words": list(self._words), "limit_ms": self._limit_ms,
                "now_ms": self._now_ms, "start_ms": self._start_ms, "ends_ms": self._ends_ms,
                "end_ms": self._end_ms, "end_reason": self._end_reason, "finishers": self._finishers,
                "players": [{"pid": r.pid, "name": r.name, "pos": r.pos, "word": r.word, "char": r.char,
                             "errors": r.errors, "place": r.place, "finish_ms": r.finish_ms,
                             "released_ms": r.released_ms}
                            for r in self._racers.values()]}

    def restore(self, snapshot: dict[str, Json]) -> None:
        if snapshot.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"typing snapshot version {snapshot.get('v')!r} is not {SNAPSHOT_VERSION}")
        if self._racers:
            raise ValueError("restore needs a game without players")
        self._words = [str(word) for word in snapshot["words"]]
        self._text = " ".join(self._words)
        self._limit_ms = int(snapshot["limit_ms"])
        self._now_ms = int(snapshot["now_ms"])
        self._start_ms = _optional_int(snapshot["start_ms"])
        self._ends_ms = _optional_int(snapshot["ends_ms"])
        self._end_ms = _optional_int(snapshot["end_ms"])
        self._end_reason = None if snapshot["end_reason"] is None else str(snapshot["end_reason"])
        self._finishers = int(snapshot["finishers"])
        for entry in snapshot["players"]:
            racer = _Racer(int(entry["pid"]), str(entry["name"]))
            racer.pos = min(max(int(entry["pos"]), 0), len(self._text))
            racer.word = int(entry["word"])
            racer.char = int(entry["char"])
            racer.errors = int(entry["errors"])
            racer.place = _optional_int(entry["place"])
            racer.finish_ms = _optional_int(entry["finish_ms"])
            racer.released_ms = _optional_int(entry["released_ms"])
            racer.connected = False
            self._racers[racer.pid] = racer
        self._events = []
        self._dirty = True


def _optional_int(value: Json) -> int | None:
    return None if value is None else int(value)


def make(ctx: GameContext) -> TypingRace:
    return TypingRace(ctx)


# -- the bot ---------------------------------------------------------------------------------------

_WRONG_KEY_CHANCE = 0.03
_MAX_KEYS_PER_TICK = 10  # after a long stall the bot picks up its pace again instead of sending a flood


class TypingBot:
    """Types the text at a steady 5 to 9 characters a second with 3% wrong keys, each put right at once.
    It keeps its own position: the state always lags behind the keys already sent."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._interval_ms = 1000.0 / rng.uniform(5.0, 9.0)
        self._me: int | None = None
        self._text = ""
        self._pos = 0
        self._racing = False
        self._done = False
        self._resync = False  # after a welcome, the first running state says where this player really is
        self._next_key_ms = 0.0
        self._last_wrong = False

    def on_message(self, message: dict[str, Json], now_ms: int) -> list[dict[str, Json]]:
        kind = message.get("type")
        if kind == "welcome":
            self._me = message.get("you")
            self._text = str(message.get("text", ""))
            self._racing = False
            self._resync = True
        elif kind == "state" and not self._done:
            self._on_state(message, now_ms)
        elif kind == "match_end" or (kind == "error" and message.get("code") in ("game_over", "finished")):
            self._done = True
        elif kind == "event" and message.get("kind") == "finished" and message.get("p") == self._me:
            self._done = True
        return []

    def _on_state(self, message: dict[str, Json], now_ms: int) -> None:
        mine = next((entry for entry in message.get("players", []) if entry.get("p") == self._me), None)
        if mine is not None and mine.get("finished"):
            self._done = True
            return
        if self._racing or message.get("ends_ms") is None or not self._text:
            return
        if self._resync and mine is not None:
            self._pos = int(mine.get("pos", 0))
        self._resync = False
        self._racing = True
        self._next_key_ms = now_ms + self._interval_ms

    def on_tick(self, now_ms: int) -> list[dict[str, Json]]:
        if not self._racing or self._done:
            return []
        keys: list[dict[str, Json]] = []
        while self._next_key_ms <= now_ms and self._pos < len(self._text):
            if len(keys) == _MAX_KEYS_PER_TICK:
                self._next_key_ms = now_ms + self._interval_ms
                break
            keys.append({"type": "key", "c": self._next_key()})
            self._next_key_ms += self._interval_ms
        if self._pos == len(self._text):
            self._done = True  # the last key is sent: any more would be refused
        return keys

    def _next_key(self) -> str:
        expected = self._text[self._pos]
        if not self._last_wrong and self._rng.random() < _WRONG_KEY_CHANCE:
            self._last_wrong = True
            return self._rng.choice([letter for letter in string.ascii_lowercase if letter != expected])
        self._last_wrong = False
        self._pos += 1
        return expected


DEFINITION = GameDefinition(
    mode="typing",
    title="Typing race",
    seats=Seats(min=2, max=5),
    forming=Forming.COUNTDOWN,
    clock=EVENT_DRIVEN,
    messages=(KeyPress,),
    make=make,
    description="Everyone types the same text; the first to type all of it wins.",
    figures=("wpm", "accuracy", "finished"),
    options=TypingOptions,
    bot=TypingBot,
)
