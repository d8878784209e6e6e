"""What Postgres knows of live matches, for recovery when Redis has lost them: which live matches belong to
nodes that are gone, and each running match's last persisted progress and players (migration 003), from
which its room is restored."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson


@dataclass(frozen=True, slots=True)
class LiveMatch:
    """A match row still waiting or running."""

    id: uuid.UUID
    room_id: str
    mode: str
    node: str
    state: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredSeat:
    pid: int
    player_id: str
    name: str
    joined_at: datetime | None
    state: dict[str, Any]  # the game's own snapshot of this player


@dataclass(frozen=True, slots=True)
class StoredMatch:
    """A running match as its last positions write left it: enough to restore its room."""

    id: uuid.UUID
    room_id: str
    mode: str
    created_at: datetime
    started_at: datetime | None
    roster: list[str] | None  # None: a development room (nobody comes back to it through the lobby)
    tick: int
    match_clock_ms: int
    game: dict[str, Any]  # the game's snapshot without its players
    saved_at: datetime
    seats: tuple[StoredSeat, ...]  # in pid (join) order
    room_ms: int = 0  # the room clock at the time of these positions
    events: int = 0  # how many events the match had recorded by then
    epoch: int = 0  # how many times the match had been restored by then


async def beat(conn: asyncpg.Connection, node: str) -> None:
    """This node is alive (migration 004)."""
    await conn.execute("INSERT INTO node_heartbeats (node, seen_at) VALUES ($1, now()) "
                       "ON CONFLICT (node) DO UPDATE SET seen_at = now()", node)


async def heartbeat_ages(conn: asyncpg.Connection, nodes: Collection[str]) -> dict[str, float]:
    """Seconds since each of these nodes last beat in Postgres (nodes that never did are left out; all of them
    while the schema is older than migration 004, as during a rolling upgrade)."""
    try:
        rows = await conn.fetch("SELECT node, extract(epoch FROM now() - seen_at)::float8 AS age "
                                "FROM node_heartbeats WHERE node = ANY($1::text[])", list(nodes))
    except asyncpg.UndefinedTableError:
        return {}
    return {row["node"]: float(row["age"]) for row in rows}


async def live_matches_elsewhere(conn: asyncpg.Connection, live_nodes: Collection[str]) -> list[LiveMatch]:
    """The waiting and running matches of every node not in `live_nodes`."""
    rows = await conn.fetch(
        "SELECT id, room_id, mode, node, state, created_at FROM matches "
        "WHERE state IN ('waiting', 'running') AND node <> ALL($1::text[]) ORDER BY created_at",
        list(live_nodes))
    return [LiveMatch(**dict(row)) for row in rows]


async def ended_matches(conn: asyncpg.Connection, match_ids: Collection[str]) -> set[str]:
    """Which of these matches are over (finished or cancelled) in Postgres; ids that are not UUIDs are none."""
    ids = []
    for match_id in match_ids:
        try:
            ids.append(uuid.UUID(match_id))
        except ValueError:
            continue
    if not ids:
        return set()
    rows = await conn.fetch("SELECT id FROM matches WHERE id = ANY($1::uuid[]) AND state IN ('finished', 'cancelled')",
                            ids)
    return {str(row["id"]) for row in rows}


async def room_ended(conn: asyncpg.Connection, room_id: str) -> bool:
    """Whether the room's last match is over in Postgres (its result durable) and no match of it is live."""
    row = await conn.fetchrow("SELECT bool_or(state IN ('waiting', 'running')) AS live, "
                              "bool_or(state IN ('finished', 'cancelled')) AS over FROM matches WHERE room_id = $1",
                              room_id)
    return row is not None and bool(row["over"]) and not row["live"]


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


async def stored_matches(conn: asyncpg.Connection, *, match_ids: Sequence[uuid.UUID] = (),
                         room_ids: Sequence[str] = (), mode: str = "") -> dict[uuid.UUID, StoredMatch]:
    """The running matches among `match_ids`, or among the live matches of `room_ids` in `mode`, that can be
    restored: with their progress and every seat's pid and game state written (two queries for any number)."""
    if room_ids:
        rows = await conn.fetch(
            "SELECT m.id, m.room_id, m.mode, m.created_at, m.started_at, g.roster, g.tick, g.match_clock_ms, g.game, "
            "g.saved_at, g.room_ms, g.events, g.epoch FROM matches m JOIN match_progress g ON g.match_id = m.id "
            "WHERE m.state = 'running' AND m.mode = $1 AND m.room_id = ANY($2::text[])", mode, list(room_ids))
    else:
        rows = await conn.fetch(
            "SELECT m.id, m.room_id, m.mode, m.created_at, m.started_at, g.roster, g.tick, g.match_clock_ms, g.game, "
            "g.saved_at, g.room_ms, g.events, g.epoch FROM matches m JOIN match_progress g ON g.match_id = m.id "
            "WHERE m.state = 'running' AND m.id = ANY($1::uuid[])", list(match_ids))
    if not rows:
        return {}
    seats: dict[uuid.UUID, list[StoredSeat]] = {}
    complete: dict[uuid.UUID, bool] = {}
    for row in await conn.fetch(
            "SELECT pp.match_id, pp.player_id, p.name, pp.pid, pp.joined_at, pp.state FROM player_positions pp "
            "JOIN players p ON p.id = pp.player_id WHERE pp.match_id = ANY($1::uuid[]) ORDER BY pp.pid",
            [row["id"] for row in rows]):
        if row["pid"] is None or row["state"] is None:  # written before migration 003: not enough to restore
            complete[row["match_id"]] = False
            continue
        complete.setdefault(row["match_id"], True)
        seats.setdefault(row["match_id"], []).append(StoredSeat(
            row["pid"], str(row["player_id"]), row["name"], row["joined_at"], _json(row["state"])))
    return {row["id"]: StoredMatch(row["id"], row["room_id"], row["mode"], row["created_at"], row["started_at"],
                                   _json(row["roster"]), row["tick"], row["match_clock_ms"], _json(row["game"]),
                                   row["saved_at"], tuple(seats[row["id"]]), row["room_ms"], row["events"],
                                   row["epoch"])
            for row in rows if complete.get(row["id"])}
