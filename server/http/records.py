"""The player-facing HTTP endpoints, read from Postgres (and the leaderboard from Redis):
`GET /players/ID/profile?mode=M`, `GET /players/ID/history?page=N&mode=M`, `GET /matches/ID`,
`GET /leaderboard?limit=N&mode=M`.
Bad ids and paging get 400, unknown ones 404, an unreachable database 503, each with a JSON error; never 500."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import asyncpg
import orjson

from lobby.leaderboard import Leaderboard
from lobby.outage import OUTAGE
from persistence import queries
from persistence.writebehind import PG_DOWN
from server.net.protocol import ErrorCode, handshake_error_body

log = logging.getLogger("tickroom.records")

PLAYER_PATH = re.compile(r"/players/([^/]{1,64})/(profile|history)/?")
MATCH_PATH = re.compile(r"/matches/([^/]{1,64})/?")
MAX_PAGE = 100_000
MAX_LIMIT = 100
DEFAULT_LIMIT = 10
LEADERBOARD_WAIT_S = 5.0
Answer = tuple[HTTPStatus, bytes]
# Postgres or Redis down, or Postgres refusing us (too many connections, a bad password): a 503, never a 500.
UNAVAILABLE: tuple[type[BaseException], ...] = (*PG_DOWN, *OUTAGE, asyncpg.PostgresError)


def _error(status: HTTPStatus, code: ErrorCode, message: str) -> Answer:
    return status, handshake_error_body(code, message)


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _int_param(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int | None:
    values = query.get(name)
    if not values:
        return default
    raw = values[0]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        return None
    value = int(raw)
    return value if low <= value <= high else None


def is_records_path(path: str) -> bool:
    return path.startswith(("/players/", "/matches/")) or path.rstrip("/") == "/leaderboard"


class RecordEndpoints:
    def __init__(self, database_url: str, leaderboards: Callable[[str], Leaderboard], modes: list[str]) -> None:
        self.database_url = database_url
        self._leaderboards = leaderboards
        self.modes = modes
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        # Set once the start-up check of the leaderboards (rebuilt from Postgres if Redis has none) is over.
        self.leaderboards_checked = asyncio.Event()

    async def with_conn(self, read: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self.database_url, min_size=0, max_size=4, timeout=5,
                                                       command_timeout=10)
        async with self._pool.acquire() as conn:
            return await read(conn)  # type: ignore[arg-type]  # a pool's proxy stands for a Connection

    async def totals(self, mode: str) -> dict[str, int]:
        result: dict[str, int] = await self.with_conn(lambda conn: queries.leaderboard_totals(conn, mode))
        return result

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def answer(self, path: str, query: dict[str, list[str]]) -> Answer:
        try:
            if path.rstrip("/") == "/leaderboard":
                return await self._leaderboard(query)
            if (match := MATCH_PATH.fullmatch(path)) is not None:
                return await self._match(match.group(1))
            if (match := PLAYER_PATH.fullmatch(path)) is not None:
                return await self._player(match.group(1), match.group(2), query)
            return _error(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, f"no endpoint at {path[:80]}")
        except UNAVAILABLE as error:
            log.warning("records unavailable for %s: %r", path[:80], error)
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.RECORDS_UNAVAILABLE,
                          "the records are unavailable right now; try again shortly")

    async def _match(self, raw_id: str) -> Answer:
        match_id = _uuid(raw_id)
        if match_id is None:
            return _error(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_MATCH_ID, "a match id is a UUID")
        page = await self.with_conn(lambda conn: queries.match_result(conn, match_id))
        if page is None:
            return _error(HTTPStatus.NOT_FOUND, ErrorCode.MATCH_NOT_FOUND, f"no match {match_id}")
        return HTTPStatus.OK, orjson.dumps(page)

    async def _player(self, raw_id: str, what: str, query: dict[str, list[str]]) -> Answer:
        player_id = _uuid(raw_id)
        if player_id is None:
            return _error(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_PLAYER_ID, "a player id is a UUID")
        mode = query.get("mode", [None])[0]
        if mode is not None and (refused := self._unknown_mode(mode)) is not None:
            return refused
        if what == "profile":
            # Without a mode, the arena's: the profile as it was when the arena was the only game.
            body = await self.with_conn(lambda conn: queries.player_profile(conn, player_id, mode or "arena"))
        else:
            page = _int_param(query, "page", 1, 1, MAX_PAGE)
            if page is None:
                return _error(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_PAGE,
                              f"page is a whole number from 1 to {MAX_PAGE}")
            body = await self.with_conn(lambda conn: queries.player_history(conn, player_id, page, mode))
        if body is None:
            return _error(HTTPStatus.NOT_FOUND, ErrorCode.PLAYER_NOT_FOUND, f"no player {player_id}")
        return HTTPStatus.OK, orjson.dumps(body)

    def _unknown_mode(self, mode: str) -> Answer | None:
        """The refusal of a mode this node has no game for, if it is one."""
        if mode in self.modes:
            return None
        return _error(HTTPStatus.BAD_REQUEST, ErrorCode.UNKNOWN_MODE,
                      f"unknown mode {mode[:40]!r}; this node has {self.modes}")

    async def _leaderboard(self, query: dict[str, list[str]]) -> Answer:
        limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        if limit is None:
            return _error(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_LIMIT, f"limit is a whole number from 1 to {MAX_LIMIT}")
        mode = query.get("mode", ["arena"])[0]
        if (refused := self._unknown_mode(mode)) is not None:
            return refused
        with contextlib.suppress(TimeoutError):  # right after start, the rebuild may still be under way
            async with asyncio.timeout(LEADERBOARD_WAIT_S):
                await self.leaderboards_checked.wait()
        standings = await self._leaderboards(mode).top(limit)
        names = await self.with_conn(lambda conn: queries.player_names(conn, [s.player_id for s in standings]))
        return HTTPStatus.OK, orjson.dumps({"mode": mode, "players": [
            {"rank": s.rank, "id": s.player_id, "name": names.get(s.player_id), "score": s.score}
            for s in standings]})
