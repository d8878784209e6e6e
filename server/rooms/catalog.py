"""The games a node serves: found through the `tickroom.games` entry-point group, picked by `TICKROOM_GAMES`,
configured with `TICKROOM_GAME_OPTIONS`, and made ready to host (seats, tick interval, message decoder)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Any

import msgspec

from game.api import Game, GameContext, GameDefinition, Message, Seats, message_type
from server.net.protocol import HOST_MESSAGES, MessageDecoder
from server.ops.settings import Settings

ENTRY_POINT_GROUP = "tickroom.games"
DEFAULT_MODE = "arena"  # what a lobby `join` without `mode` plays; TICKROOM_MIN/MAX_PLAYERS are its seats


class GameLoadError(ValueError):
    """A game could not be found, loaded or configured; the message names it and what is wrong."""


@dataclass(frozen=True, slots=True)
class HostedGame:
    """A game as this node hosts it: its definition, the seats and tick interval in force, its operator
    options (validated), and the decoder of its client messages (the host's and the game's)."""

    definition: GameDefinition
    seats: Seats
    interval_s: float | None  # fixed-tick games: seconds between ticks; None: event-driven
    decoder: MessageDecoder
    options: Any = None
    maker: Callable[[GameContext], Game] | None = None  # tests swap the game's own factory

    @property
    def mode(self) -> str:
        return self.definition.mode

    @property
    def event_driven(self) -> bool:
        return self.interval_s is None

    @property
    def tick_ms(self) -> float | None:
        return None if self.interval_s is None else self.interval_s * 1000

    def make(self, rng: random.Random, time_limit_ms: int) -> Game:
        make = self.maker or self.definition.make
        return make(GameContext(rng=rng, time_limit_ms=time_limit_ms, options=self.options, tick_ms=self.tick_ms))

    def with_maker(self, maker: Callable[[GameContext], Game]) -> HostedGame:
        return replace(self, maker=maker)

    def describe(self) -> dict[str, Any]:
        """This game for `GET /modes`: name, seats, how rooms form, clock, and its message schemas."""
        definition = self.definition
        messages = list(definition.messages)
        schemas, components = msgspec.json.schema_components(messages, ref_template="#/$defs/{name}")
        return {
            "mode": definition.mode, "title": definition.title, "description": definition.description,
            "seats": {"min": self.seats.min, "max": self.seats.max, "line": self.seats.line,
                      "backfill": self.seats.backfill},
            "forming": definition.forming.value,
            "clock": {"kind": "events"} if self.interval_s is None else {"kind": "ticks",
                                                                         "hz": round(1 / self.interval_s, 2)},
            "figures": list(definition.figures),
            "messages": {message_type(cls): schema for cls, schema in zip(messages, schemas, strict=True)},
            "$defs": components,
        }


def installed_games() -> dict[str, GameDefinition]:
    """Every game installed in this Python environment, by mode (the `tickroom.games` entry points)."""
    found: dict[str, GameDefinition] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            definition = point.load()
        except Exception as error:
            raise GameLoadError(f"game {point.name!r} ({point.value}) could not be loaded: {error!r}") from error
        if not isinstance(definition, GameDefinition):
            raise GameLoadError(f"entry point {point.name!r} ({point.value}) is not a GameDefinition")
        if definition.mode != point.name:
            raise GameLoadError(f"entry point {point.name!r} names a game whose mode is {definition.mode!r}")
        if point.name in found:
            raise GameLoadError(f"two installed games call themselves {point.name!r}")
        found[point.name] = definition
    return found


def host_games(settings: Settings, definitions: Mapping[str, GameDefinition] | None = None) -> dict[str, HostedGame]:
    """The games this node serves (`TICKROOM_GAMES`, default: every installed one), configured."""
    available = dict(installed_games() if definitions is None else definitions)
    wanted = [name.strip() for name in settings.games.split(",") if name.strip()] or sorted(available)
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise GameLoadError(f"TICKROOM_GAMES names {unknown}, which are not installed (installed: "
                            f"{sorted(available)})")
    options = _options(settings.game_options)
    stray = sorted(set(options) - set(wanted))
    if stray:
        raise GameLoadError(f"TICKROOM_GAME_OPTIONS has options for {stray}, which this node does not serve")
    return {name: hosted(available[name], settings, options.get(name)) for name in wanted}


def hosted(definition: GameDefinition, settings: Settings, raw_options: Any = None) -> HostedGame:
    """One game made ready to host with these settings and (unvalidated) options."""
    seats = definition.seats
    if definition.mode == DEFAULT_MODE:
        seats = replace(seats, min=settings.min_players, max=settings.max_players)
    interval_s = None
    if definition.clock.hz is not None:
        interval_s = settings.tick_ms / 1000 if settings.tick_ms > 0 else 1 / definition.clock.hz
    options = None
    if definition.options is not None:
        try:
            options = msgspec.convert(raw_options or {}, definition.options)
        except msgspec.ValidationError as error:
            raise GameLoadError(f"TICKROOM_GAME_OPTIONS for {definition.mode!r}: {error}") from error
    elif raw_options:
        raise GameLoadError(f"game {definition.mode!r} takes no options")
    messages: Iterable[type[Message]] = (*HOST_MESSAGES, *definition.messages)
    return HostedGame(definition, seats, interval_s, MessageDecoder(tuple(messages)), options)


def _options(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        parsed = msgspec.json.decode(raw)
    except msgspec.DecodeError as error:
        raise GameLoadError(f"TICKROOM_GAME_OPTIONS is not JSON: {error}") from error
    if not isinstance(parsed, dict) or not all(isinstance(value, dict) for value in parsed.values()):
        raise GameLoadError("TICKROOM_GAME_OPTIONS must be a JSON object of objects, by mode, "
                            'e.g. {"arena": {"kill_target": 5}}')
    return parsed
