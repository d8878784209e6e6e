"""The player-facing reads of Postgres: a match's result, a player's history and profile, the leaderboard's
totals. Named queries only; each returns plain JSON-ready values (ids and times as strings)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson

HISTORY_PAGE = 50
RECENT = 10

# A line's figures: the game's own (migration 005). A line written before them has only the arena's kill and
# death columns (and so has a line of a player who left an arena match before it began): those, then.
_FIGURES = ("CASE WHEN mp.figures = '{}'::jsonb AND m.mode = 'arena' "
            "THEN jsonb_build_object('kills', mp.kills, 'deaths', mp.deaths) ELSE mp.figures END")
_LINE = ("mp.rank, mp.kills, mp.deaths, mp.score, m.id AS match_id, m.room_id, m.mode, m.started_at, m.ended_at, "
         "m.end_reason, (SELECT count(*) FROM match_players o WHERE o.match_id = m.id) AS players, "
         f"{_FIGURES} AS figures")
# $2: a mode, or null for every mode.
_FINISHED_OF_PLAYER = ("FROM match_players mp JOIN matches m ON m.id = mp.match_id "
                       "WHERE mp.player_id = $1 AND m.state = 'finished' AND ($2::text IS NULL OR m.mode = $2)")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _duration_ms(started: datetime | None, ended: datetime | None) -> int | None:
    if started is None or ended is None:
        return None
    return int((ended - started).total_seconds() * 1000)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _history_line(row: asyncpg.Record) -> dict[str, Any]:
    return {"match": str(row["match_id"]), "room": row["room_id"], "mode": row["mode"],
            "started_at": _iso(row["started_at"]), "ended_at": _iso(row["ended_at"]), "reason": row["end_reason"],
            "duration_ms": _duration_ms(row["started_at"], row["ended_at"]), "players": row["players"],
            "rank": row["rank"], "kills": row["kills"], "deaths": row["deaths"], "score": row["score"],
            "figures": orjson.loads(row["figures"])}


def _mode_line(row: asyncpg.Record) -> dict[str, Any]:
    """A line of a per-mode profile: how the player did in one match of the mode."""
    return {"match": str(row["match_id"]), "ended_at": _iso(row["ended_at"]), "rank": row["rank"],
            "score": row["score"], "figures": orjson.loads(row["figures"])}


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


async def player_history(conn: asyncpg.Connection, player_id: uuid.UUID, page: int,
                         mode: str | None = None) -> dict[str, Any] | None:
    """The player's finished matches (of `mode` only, if given), newest first, `HISTORY_PAGE` a page (page 1
    is the newest)."""
    player = await conn.fetchrow("SELECT id, name FROM players WHERE id = $1", player_id)
    if player is None:
        return None
    total = await conn.fetchval(f"SELECT count(*) {_FINISHED_OF_PLAYER}", player_id, mode)
    rows = await conn.fetch(f"SELECT {_LINE} {_FINISHED_OF_PLAYER} ORDER BY m.ended_at DESC, m.id "
                            f"LIMIT $3 OFFSET $4", player_id, mode, HISTORY_PAGE, (page - 1) * HISTORY_PAGE)
    return {"player": str(player["id"]), "name": player["name"], "mode": mode, "page": page,
            "per_page": HISTORY_PAGE, "total": total, "pages": max(1, -(-total // HISTORY_PAGE)),
            "matches": [_history_line(r) for r in rows]}


# The player and their totals over the mode's finished matches: count, wins, average score and rank, and the
# average of each numeric figure (over the lines that have it).
_PROFILE_SUMMARY = f"""
WITH lines AS (
    SELECT mp.rank, mp.score, {_FIGURES} AS figures
    FROM match_players mp JOIN matches m ON m.id = mp.match_id
    WHERE mp.player_id = $1 AND m.mode = $2 AND m.state = 'finished'),
figures AS (
    SELECT f.key, avg(f.value::float8) AS average
    FROM lines, jsonb_each(lines.figures) AS f
    WHERE jsonb_typeof(f.value) = 'number'
    GROUP BY f.key)
SELECT p.id, p.name, p.created_at, p.last_seen, t.matches, t.wins, t.score, t.rank,
       (SELECT jsonb_object_agg(key, average) FROM figures) AS figures
FROM players p,
     (SELECT count(*) AS matches, count(*) FILTER (WHERE rank = 1) AS wins, avg(score)::float8 AS score,
             avg(rank)::float8 AS rank FROM lines) AS t
WHERE p.id = $1
"""

# The player's best line of the mode (highest score, then best rank, then the newest), then their last $3 lines,
# newest first.
_PROFILE_LINES = f"""
WITH lines AS (SELECT {_LINE} {_FINISHED_OF_PLAYER})
SELECT * FROM (
    (SELECT 'best' AS kind, * FROM lines ORDER BY score DESC, rank NULLS LAST, ended_at DESC, match_id LIMIT 1)
    UNION ALL
    (SELECT 'last' AS kind, * FROM lines ORDER BY ended_at DESC, match_id LIMIT $3)) AS picked
ORDER BY kind, ended_at DESC, match_id
"""


async def player_profile(conn: asyncpg.Connection, player_id: uuid.UUID,
                         mode: str = "arena") -> dict[str, Any] | None:
    """Who the player is and how they play `mode`: their finished matches of it, best line, last lines and
    averages (score and each figure), and where their history of the mode is. Also the fields the profile had
    when the arena was the only game (`averages` of kills, deaths, score and rank, `best_match`,
    `last_matches`), over the same matches."""
    summary = await conn.fetchrow(_PROFILE_SUMMARY, player_id, mode)
    if summary is None:
        return None
    lines = await conn.fetch(_PROFILE_LINES, player_id, mode, RECENT) if summary["matches"] else []
    best = next((row for row in lines if row["kind"] == "best"), None)
    recent = [row for row in lines if row["kind"] == "last"]
    figures = {key: _rounded(value) for key, value in orjson.loads(summary["figures"] or "{}").items()}
    return {"player": str(summary["id"]), "name": summary["name"], "since": _iso(summary["created_at"]),
            "last_seen": _iso(summary["last_seen"]), "mode": mode, "matches": summary["matches"],
            "wins": summary["wins"],
            "best": None if best is None else _mode_line(best),
            "last": [_mode_line(row) for row in recent],
            "average": {"score": _rounded(summary["score"]), "figures": figures},
            "history": f"/players/{summary['id']}/history?mode={mode}&page=1",
            "averages": {"kills": figures.get("kills"), "deaths": figures.get("deaths"),
                         "score": _rounded(summary["score"]), "rank": _rounded(summary["rank"])},
            "best_match": None if best is None else _history_line(best),
            "last_matches": [_history_line(row) for row in recent]}


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
