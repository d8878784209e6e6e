"""Seats in rooms of 3 to 5, assigned atomically in Redis so that any number of nodes can seat at once.

Each transition that reads and then writes several keys is one Lua script (`lobby/lua/`, each prefixed with
`common.lua`), called by SHA; redis-py's `Script` loads it again if Redis lost its script cache (a restart,
SCRIPT FLUSH). Every script answers with JSON: its outcome, the room as it now is, and the nodes to notify.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from lobby.keys import LobbyKeys, text


@dataclass(frozen=True, slots=True)
class SeatingRules:
    min_players: int = 3
    max_players: int = 5
    countdown_ms: int = 10_000
    backfill: bool = False  # a seat given up in a running match goes to the longest-waiting player
    join_running: bool = False  # a running room offers its free places from the start (a game with a line)
    player_ttl_s: int = 300
    room_ttl_s: int = 600

    def as_json(self, mode: str) -> bytes:
        return orjson.dumps({"min": self.min_players, "max": self.max_players, "countdown_ms": self.countdown_ms,
                             "backfill": self.backfill, "join_running": self.join_running,
                             "player_ttl": self.player_ttl_s,
                             "room_ttl": self.room_ttl_s, "mode": mode})


@dataclass(frozen=True, slots=True)
class Member:
    """A player in a room's join-order list."""

    player_id: str
    name: str

    def wire(self) -> dict[str, str]:
        return {"id": self.player_id, "name": self.name}


@dataclass(frozen=True, slots=True)
class RoomView:
    """A room as a script left it: `state` is waiting, countdown, running, queued (no room) or closed."""

    room_id: str
    state: str
    node: str
    countdown_ends_ms: int | None
    started_ms: int | None
    players: tuple[Member, ...]
    version: int = 0  # bumped by every change of the room: a lower one is an older read

    @property
    def player_ids(self) -> list[str]:
        return [member.player_id for member in self.players]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A script's answer. `outcome` names what happened; `view` is the room concerned, when there is one;
    `notify` lists the nodes whose players or rooms it touched; `conn_node`/`conn_kind` say where a busy
    player is connected."""

    outcome: str
    view: RoomView | None
    notify: tuple[str, ...]
    room: str = ""  # the room concerned, also when there is no view of it
    conn: str = ""
    conn_node: str = ""
    conn_kind: str = ""
    joined_ms: int | None = None
    counts: dict[str, int] | None = None
    saved: tuple[str, ...] = ()  # (join) matches whose results were saved after the player left them


@dataclass(frozen=True, slots=True)
class Claim:
    """A live match for `reclaim.lua`: with `members`, its room is to run again on the claimer."""

    room_id: str
    match_id: str
    old_node: str
    created_ms: int = 0
    started_ms: int = 0
    members: tuple[Member, ...] | None = None


@dataclass(frozen=True, slots=True)
class RoomRecord:
    room_id: str
    mode: str
    node: str
    state: str
    created_ms: int
    started_ms: int | None
    countdown_ends_ms: int | None
    players: tuple[Member, ...]
    version: int = 0

    @property
    def player_ids(self) -> list[str]:
        return [member.player_id for member in self.players]



def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    written = text(value)
    return int(float(written)) if written else None


def _members(raw: Any) -> tuple[Member, ...]:
    entries = orjson.loads(raw) if raw else []
    if not isinstance(entries, list):  # cjson's empty table
        return ()
    return tuple(Member(str(entry["id"]), str(entry.get("name", ""))) for entry in entries)


def _list(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in value) if isinstance(value, list) else ()


def parse_outcome(raw: Any) -> Outcome:
    reply: dict[str, Any] = orjson.loads(raw)
    view = None
    if isinstance(reply.get("state"), str) and "players" in reply:
        view = RoomView(room_id=str(reply.get("room", "")), state=reply["state"], node=str(reply.get("node") or ""),
                        countdown_ends_ms=_optional_int(reply.get("countdown_ends_ms")),
                        started_ms=_optional_int(reply.get("started_ms")), players=_members(reply["players"]),
                        version=int(reply.get("version") or 0))
    counts: dict[str, int] = {key: int(reply[key]) for key in ("moved", "recovered") if key in reply}
    return Outcome(outcome=str(reply["outcome"]), view=view, notify=_list(reply.get("notify")),
                   room=str(reply.get("room") or ""),
                   conn=str(reply.get("conn") or ""), conn_node=str(reply.get("conn_node") or ""),
                   conn_kind=str(reply.get("conn_kind") or ""),
                   joined_ms=_optional_int(reply.get("joined_ms")), counts=counts or None,
                   saved=_list(reply.get("saved")))


def _script(name: str) -> str:
    lua = resources.files("lobby").joinpath("lua")
    return lua.joinpath("common.lua").read_text() + "\n" + lua.joinpath(f"{name}.lua").read_text()


SAVED_TTL_S = 3600  # a player told nothing within the hour reads the result at GET /matches/ID instead

SCRIPTS = ("join", "leave", "start", "attach", "detach", "finish", "settle", "expire", "sweep", "reclaim")


class Seating:
    """The lobby's transitions for one game mode, each one atomic in Redis."""

    def __init__(self, client: aioredis.Redis, keys: LobbyKeys, rules: SeatingRules) -> None:
        self.client = client
        self.keys = keys
        self.rules = rules
        self._rules_json = rules.as_json(keys.mode)
        self._sources = {name: _script(name) for name in SCRIPTS}
        self._scripts = {name: client.register_script(source) for name, source in self._sources.items()}

    async def _call(self, name: str, now_ms: int, *args: str | int) -> Outcome:
        # EVALSHA directly: redis-py's Script.__call__ costs a few percent of a lobby join in checks.
        script = self._scripts[name]
        try:
            raw = await self.client.evalsha(script.sha, 1, self.keys.available, self.keys.base, now_ms,
                                            self._rules_json, *args)
        except NoScriptError:  # Redis restarted or its script cache was flushed: EVAL runs and caches it again
            raw = await self.client.eval(self._sources[name], 1, self.keys.available, self.keys.base, now_ms,
                                         self._rules_json, *args)
        return parse_outcome(raw)

    async def load_scripts(self) -> None:
        """Load every script now (at start, and after Redis comes back), so that the first call is fast."""
        for script in self._scripts.values():
            script.sha = await self.client.script_load(script.script)

    async def join(self, player_id: str, name: str, now_ms: int, *, conn_id: str, conn_node: str,
                   new_room_id: str = "", new_room_node: str = "", takeover: str = "",
                   refuse_full: bool = False) -> Outcome:
        """Seat a player who joins through a lobby connection (or give them back their seat). Outcomes:
        seated, rejoined, requeued (seated again after losing their room), busy (connected elsewhere), and with
        `refuse_full` full (a player the lobby did not know, no `new_room_node` and no open room with a free
        seat: nothing written; without it that player waits in the queue alone)."""
        return await self._call("join", now_ms, player_id, name, conn_id, conn_node, new_room_id, new_room_node,
                                takeover, "1" if refuse_full else "0")

    async def note_saved(self, match_id: str, player_ids: Iterable[str]) -> None:
        """The match's result is durable, and these players were gone from its room by then: their next `join`
        tells them (`saved`); kept SAVED_TTL_S at most."""
        async with self.client.pipeline(transaction=False) as pipe:
            for player_id in player_ids:
                key = self.keys.player_saved(player_id)
                pipe.sadd(key, match_id)
                pipe.expire(key, SAVED_TTL_S)
            await pipe.execute()

    async def leave(self, player_id: str, now_ms: int, *, conn_id: str = "*", scope: str = "seat") -> Outcome:
        """Give up a place: scope "queue" only while waiting (a lobby connection ends), "seat" in any state.
        Outcomes: left, kept (matched: the seat stays), stale (another connection holds it), not_seated."""
        return await self._call("leave", now_ms, player_id, conn_id, scope)

    async def start_if_due(self, room_id: str, now_ms: int) -> Outcome:
        """Start the room if its countdown is over: started, unchanged, or missing."""
        return await self._call("start", now_ms, room_id)

    async def attach(self, player_id: str, room_id: str, now_ms: int, *, conn_id: str, conn_node: str) -> Outcome:
        """A game connection arrived at the room's host: attached, or not_in_room."""
        return await self._call("attach", now_ms, player_id, room_id, conn_id, conn_node)

    async def detach(self, player_id: str, conn_id: str, now_ms: int, *, keep_node: bool = False) -> Outcome:
        """A connection ended but the player keeps their place for a grace period: detached, or stale."""
        return await self._call("detach", now_ms, player_id, conn_id, "1" if keep_node else "0")

    async def finish(self, room_id: str, now_ms: int, *, host: str = "", match_id: str = "") -> Outcome:
        """End the room (its match `match_id`, when known) in the lobby; with `host`, only if that node still
        hosts it (else `elsewhere`)."""
        return await self._call("finish", now_ms, room_id, host, match_id)

    async def settle(self, room_id: str, match_id: str, now_ms: int) -> Outcome:
        """The match's result is in Postgres: its `over` mark and its `claim` go (settled)."""
        return await self._call("settle", now_ms, room_id, match_id)

    async def expire(self, room_id: str, now_ms: int, *, host_alive: bool, new_room_ids: Sequence[str],
                     new_room_node: str) -> Outcome:
        """Decide the fate of a room whose shadow key expired: alive, gone, removed, requeued or recovery."""
        return await self._call("expire", now_ms, room_id, "1" if host_alive else "0",
                                orjson.dumps(list(new_room_ids)).decode(), new_room_node)

    async def sweep(self, dead_node: str, now_ms: int, *, new_host: str, alive_key: str = "",
                    hand_off: bool = False) -> Outcome:
        """Sweep up after a dead node ('alive', changing nothing, while `alive_key`, its heartbeat, exists), or,
        with `hand_off`, move a draining node's rooms to `new_host` leaving its players' seats alone."""
        return await self._call("sweep", now_ms, dead_node, new_host, alive_key, "1" if hand_off else "0")

    async def reclaim_many(self, node: str, now_ms: int, claims: Sequence[Claim]) -> list[Outcome]:
        """Claim live matches the lobby lost for `node` (recovery from Postgres; for each, exactly one caller
        wins: 'claimed'), all in one round trip; see `lobby/lua/reclaim.lua`."""
        if not claims:
            return []
        script = self._scripts["reclaim"]
        script.sha = await self.client.script_load(script.script)  # a pipeline cannot fall back to EVAL
        async with self.client.pipeline(transaction=False) as pipe:
            for claim in claims:
                members = ("" if claim.members is None
                           else orjson.dumps([member.wire() for member in claim.members]).decode())
                pipe.evalsha(script.sha, 1, self.keys.available, self.keys.base, now_ms, self._rules_json,
                             claim.room_id, claim.match_id, node, claim.created_ms, claim.started_ms, members,
                             claim.old_node)
            replies = await pipe.execute()
        return [parse_outcome(raw) for raw in replies]

    # -- reads -------------------------------------------------------------------------------------

    def _record(self, room_id: str, fields: dict[Any, Any]) -> RoomRecord | None:
        if not fields:
            return None
        record = {text(k): text(v) for k, v in fields.items()}
        if "state" not in record:
            return None
        return RoomRecord(room_id=room_id, mode=record.get("mode", self.keys.mode), node=record.get("node", ""),
                          state=record["state"], created_ms=int(record.get("created_ms", 0)),
                          started_ms=_optional_int(record.get("started_ms")),
                          countdown_ends_ms=_optional_int(record.get("countdown_ends_ms")),
                          players=_members(record.get("players")), version=int(record.get("version", 0)))

    async def room(self, room_id: str) -> RoomRecord | None:
        return self._record(room_id, await self.client.hgetall(self.keys.room(room_id)))

    async def rooms(self, room_ids: Iterable[str] | None = None) -> list[RoomRecord]:
        """The given rooms (default: every room of the mode) that exist, in one round trip."""
        ids = sorted(text(room_id) for room_id in await self.client.smembers(self.keys.rooms)) \
            if room_ids is None else list(room_ids)
        if not ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for room_id in ids:
                pipe.hgetall(self.keys.room(room_id))
            replies = await pipe.execute()
        return [record for room_id, fields in zip(ids, replies, strict=True)
                if (record := self._record(room_id, fields)) is not None]

    async def player(self, player_id: str) -> dict[str, str]:
        return {text(k): text(v) for k, v in (await self.client.hgetall(self.keys.player(player_id))).items()}

    async def open_rooms(self) -> list[tuple[str, int]]:
        """Rooms with a free seat and their player counts, fullest first."""
        entries: list[Any] = await self.client.zrevrange(self.keys.available, 0, -1, withscores=True)
        return [(text(room_id), int(score)) for room_id, score in entries]

    async def queue_length(self) -> int:
        return int(await self.client.zcard(self.keys.queue))

    async def refresh(self, player_ids: Iterable[str], room_ids: Iterable[str]) -> None:
        """Keep the given players' and rooms' keys alive for another TTL; a room's shadow key is set again
        only when the room's hash still exists (a deleted room must not come back as a lone shadow)."""
        player_ttl, room_ttl = self.rules.player_ttl_s, self.rules.room_ttl_s
        rooms = list(room_ids)
        async with self.client.pipeline(transaction=False) as pipe:
            for player_id in player_ids:
                pipe.expire(self.keys.player(player_id), player_ttl)
            for room_id in rooms:
                pipe.expire(self.keys.room(room_id), room_ttl + SHADOW_MARGIN_S)
                pipe.expire(self.keys.room_players(room_id), room_ttl + SHADOW_MARGIN_S)
            replies = await pipe.execute()
        alive = [room_id for k, room_id in enumerate(rooms) if replies[-2 * len(rooms) + 2 * k]] if rooms else []
        if alive:
            async with self.client.pipeline(transaction=False) as pipe:
                for room_id in alive:
                    pipe.set(self.keys.room_shadow(room_id), "1", ex=room_ttl)
                await pipe.execute()


# As in common.lua: a room's data outlives its shadow key by this long.
SHADOW_MARGIN_S = 120
