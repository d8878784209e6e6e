"""The player-facing reads of Postgres: a match's result, a player's history and profile, the leaderboard's
totals. Named queries only; each returns plain JSON-ready values (ids and times as strings)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

HISTORY_PAGE = 50
RECENT = 10

_LINE = ("mp.rank, mp.kills, mp.deaths, mp.score, m.id AS match_id, m.room_id, m.mode, m.started_at, m.ended_at, "
         "m.end_reason, (SELECT count(*) FROM match_players o WHERE o.match_id = m.id) AS players")
_FINISHED_OF_PLAYER = ("FROM match_players mp JOIN matches m ON m.id = mp.match_id "
                       "WHERE mp.player_id = $1 AND m.state = 'finished'")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _duration_ms(started: datetime | None, ended: datetime | None) -> int | None:
    if started is None or ended is None:
        return None
    return int((ended - started).total_seconds() * 1000)


def _history_line(row: asyncpg.Record) -> dict[str, Any]:
    return {"match": str(row["match_id"]), "room": row["room_id"], "mode": row["mode"],
            "started_at": _iso(row["started_at"]), "ended_at": _iso(row["ended_at"]), "reason": row["end_reason"],
            "duration_ms": _duration_ms(row["started_at"], row["ended_at"]), "players": row["players"],
            "rank": row["rank"], "kills": row["kills"], "deaths": row["deaths"], "score": row["score"]}


async def match_result(conn: asyncpg.Connection, match_id: uuid.UUID) -> dict[str, Any] | None:
    """A match's page: its state, times, duration and (once finished) the ranking."""
    match = await conn.fetchrow("SELECT id, room_id, mode, node, state, created_at, started_at, ended_at, "
                                "end_reason FROM matches WHERE id = $1", match_id)
    if match is None:
        return None
    lines = await conn.fetch(
        "SELECT mp.player_id, p.name, mp.join_order, mp.rank, mp.kills, mp.deaths, mp.score, mp.left_at "
        "FROM match_players mp JOIN players p ON p.id = mp.player_id WHERE mp.match_id = $1 "
        "ORDER BY mp.rank NULLS LAST, mp.join_order", match_id)
    return {"match": str(match["id"]), "room": match["room_id"], "mode": match["mode"], "node": match["node"],
            "state": match["state"], "created_at": _iso(match["created_at"]),
            "started_at": _iso(match["started_at"]), "ended_at": _iso(match["ended_at"]),
            "reason": match["end_reason"], "duration_ms": _duration_ms(match["started_at"], match["ended_at"]),
            "ranking": [{"id": str(r["player_id"]), "name": r["name"], "join_order": r["join_order"],
                         "rank": r["rank"], "kills": r["kills"], "deaths": r["deaths"], "score": r["score"],
                         "left_at": _iso(r["left_at"])} for r in lines]}


async def player_history(conn: asyncpg.Connection, player_id: uuid.UUID, page: int) -> dict[str, Any] | None:
    """The player's finished matches, newest first, `HISTORY_PAGE` a page (page 1 is the newest)."""
    player = await conn.fetchrow("SELECT id, name FROM players WHERE id = $1", player_id)
    if player is None:
        return None
    total = await conn.fetchval(f"SELECT count(*) {_FINISHED_OF_PLAYER}", player_id)
    rows = await conn.fetch(f"SELECT {_LINE} {_FINISHED_OF_PLAYER} ORDER BY m.ended_at DESC, m.id "
                            f"LIMIT $2 OFFSET $3", player_id, HISTORY_PAGE, (page - 1) * HISTORY_PAGE)
    return {"player": str(player["id"]), "name": player["name"], "page": page, "per_page": HISTORY_PAGE,
            "total": total, "pages": max(1, -(-total // HISTORY_PAGE)), "matches": [_history_line(r) for r in rows]}


async def player_profile(conn: asyncpg.Connection, player_id: uuid.UUID) -> dict[str, Any] | None:
    """Who the player is, their best match (highest score, then best rank), their last matches, and their
    averages over every finished match."""
    player = await conn.fetchrow("SELECT id, name, created_at, last_seen FROM players WHERE id = $1", player_id)
    if player is None:
        return None
    averages = await conn.fetchrow(
        f"SELECT count(*) AS matches, avg(mp.kills)::float8 AS kills, avg(mp.deaths)::float8 AS deaths, "
        f"avg(mp.score)::float8 AS score, avg(mp.rank)::float8 AS rank, "
        f"count(*) FILTER (WHERE mp.rank = 1) AS wins {_FINISHED_OF_PLAYER}", player_id)
    best = await conn.fetchrow(f"SELECT {_LINE} {_FINISHED_OF_PLAYER} "
                               f"ORDER BY mp.score DESC, mp.rank NULLS LAST, m.ended_at DESC LIMIT 1", player_id)
    recent = await conn.fetch(f"SELECT {_LINE} {_FINISHED_OF_PLAYER} ORDER BY m.ended_at DESC, m.id LIMIT $2",
                              player_id, RECENT)
    assert averages is not None

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {"player": str(player["id"]), "name": player["name"], "since": _iso(player["created_at"]),
            "last_seen": _iso(player["last_seen"]), "matches": averages["matches"], "wins": averages["wins"],
            "averages": {"kills": rounded(averages["kills"]), "deaths": rounded(averages["deaths"]),
                         "score": rounded(averages["score"]), "rank": rounded(averages["rank"])},
            "best_match": None if best is None else _history_line(best),
            "last_matches": [_history_line(r) for r in recent]}


async def player_names(conn: asyncpg.Connection, player_ids: list[str]) -> dict[str, str]:
    rows = await conn.fetch("SELECT id, name FROM players WHERE id = ANY($1::uuid[])",
                            [uuid.UUID(pid) for pid in player_ids])
    return {str(r["id"]): r["name"] for r in rows}


async def leaderboard_totals(conn: asyncpg.Connection, mode: str) -> dict[str, int]:
    """Each player's total score over the mode's finished matches: what the Redis leaderboard is rebuilt from."""
    rows = await conn.fetch("SELECT mp.player_id, sum(mp.score)::bigint AS total FROM match_players mp "
                            "JOIN matches m ON m.id = mp.match_id WHERE m.state = 'finished' AND m.mode = $1 "
                            "GROUP BY mp.player_id", mode)
    return {str(r["player_id"]): int(r["total"]) for r in rows}
