"""Seats in rooms of 3 to 5, assigned atomically in Redis so that any number of nodes can seat at once.

Each transition that reads and then writes several keys is one Lua script (`lobby/lua/`), called by
SHA; redis-py's `Script` loads it again if Redis lost its script cache (a restart, SCRIPT FLUSH).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis

from lobby.keys import LobbyKeys


@dataclass(frozen=True, slots=True)
class SeatingRules:
    min_players: int = 3
    max_players: int = 5
    countdown_ms: int = 10_000
    backfill: bool = False
    player_ttl_s: int = 300
    room_ttl_s: int = 600


@dataclass(frozen=True, slots=True)
class Seat:
    """Where a join put a player: `outcome` is "seated", "rejoined" or "no_room"."""

    outcome: str
    room_id: str
    players: int
    state: str
    countdown_ends_ms: int | None


@dataclass(frozen=True, slots=True)
class Departure:
    """What a leave did: `outcome` is "left" or "not_seated"; `state` is the room's state after it."""

    outcome: str
    room_id: str
    players: int
    state: str


@dataclass(frozen=True, slots=True)
class RoomRecord:
    room_id: str
    mode: str
    node: str
    state: str
    created_ms: int
    started_ms: int | None
    countdown_ends_ms: int | None
    players: list[str]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional_int(value: Any) -> int | None:
    text = _text(value) if value is not None else ""
    return int(text) if text else None


def _script(name: str) -> str:
    return resources.files("lobby").joinpath("lua", f"{name}.lua").read_text()


class Seating:
    def __init__(self, client: aioredis.Redis, keys: LobbyKeys, rules: SeatingRules) -> None:
        self.client = client
        self.keys = keys
        self.rules = rules
        self._seat = client.register_script(_script("seat"))
        self._leave = client.register_script(_script("leave"))
        self._start = client.register_script(_script("start"))

    async def join(self, player_id: str, now_ms: int, *, new_room_id: str = "", node_id: str = "") -> Seat:
        """Seat the player; `new_room_id` (on `node_id`) is used only if no open room has a seat."""
        rules = self.rules
        reply = await self._seat(keys=[self.keys.available], args=[
            self.keys.base, player_id, now_ms, rules.min_players, rules.max_players, rules.countdown_ms,
            new_room_id, node_id, self.keys.mode, rules.player_ttl_s, rules.room_ttl_s])
        outcome, room_id, players, state, ends = reply
        return Seat(_text(outcome), _text(room_id), int(players), _text(state), _optional_int(ends))

    async def leave(self, player_id: str) -> Departure:
        reply = await self._leave(keys=[self.keys.available], args=[
            self.keys.base, player_id, self.rules.min_players, "1" if self.rules.backfill else "0"])
        outcome, room_id, players, state = reply
        return Departure(_text(outcome), _text(room_id), int(players), _text(state))

    async def start_if_due(self, room_id: str, now_ms: int) -> str:
        """Start the room if its countdown is over; its state afterwards ("missing" if it is gone)."""
        reply = await self._start(keys=[self.keys.available],
                                  args=[self.keys.base, room_id, now_ms, self.rules.min_players])
        return _text(reply[0])

    async def room(self, room_id: str) -> RoomRecord | None:
        fields = await self.client.hgetall(self.keys.room(room_id))
        if not fields:
            return None
        record = {_text(k): _text(v) for k, v in fields.items()}
        return RoomRecord(room_id=room_id, mode=record["mode"], node=record["node"], state=record["state"],
                          created_ms=int(record["created_ms"]),
                          started_ms=_optional_int(record.get("started_ms")),
                          countdown_ends_ms=_optional_int(record.get("countdown_ends_ms")),
                          players=list(orjson.loads(record["players"])))

    async def open_rooms(self) -> list[tuple[str, int]]:
        """Rooms with a free seat and their player counts, fullest first."""
        entries: list[Any] = await self.client.zrevrange(self.keys.available, 0, -1, withscores=True)
        return [(_text(room_id), int(score)) for room_id, score in entries]
