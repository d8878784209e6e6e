"""The player-facing HTTP endpoints on a node that keeps records: profile, history with paging, a match's
result page, the leaderboard (rebuilt from Postgres at start when Redis has none), and their errors."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from lobby.keys import LobbyKeys
from lobby.leaderboard import LeaderboardFeed
from lobby.outage import OUTAGE
from persistence.migrate import migrate_url
from persistence.writebehind import WriteBehind
from server.app import App
from server.ops.embedded import LocalRedis
from tests.serverkit import start_lobby_app
from tests.test_writebehind import T0_MS

# Fixed ids: test parameters name them, and every pytest-xdist worker must collect the same tests.
ANN, BOB, CID = (str(uuid.UUID(int=0xA11 + n)) for n in range(3))


def result(match_id: str, n: int, lines: list[tuple[str, str, int, int]]) -> dict[str, Any]:
    """Match number `n` (ended n minutes after T0) with lines (player, name, rank, score)."""
    return {"op": "match_result", "match": match_id, "room": f"r{n}", "mode": "arena", "node": "n1",
            "created_ms": T0_MS + 60_000 * n, "started_ms": T0_MS + 60_000 * n + 1_000,
            "ended_ms": T0_MS + 60_000 * n + 31_000, "reason": "kills",
            "players": [{"id": pid, "name": name, "order": i + 1, "joined_ms": T0_MS + 60_000 * n, "rank": rank,
                         "kills": score // 100, "deaths": rank - 1, "score": score}
                        for i, (pid, name, rank, score) in enumerate(lines)]}


@pytest.fixture
async def recorded(fresh_database: str, redis_url: str) -> AsyncIterator[tuple[App, list[str]]]:
    """55 finished matches of ann (with bob in each, and cid in the first), then a node on that database."""
    await migrate_url(fresh_database)
    client = aioredis.Redis.from_url(redis_url)
    queue = WriteBehind(fresh_database, client, f"t:{uuid.uuid4().hex}:spill")
    task = asyncio.get_running_loop().create_task(queue.run())
    match_ids = [str(uuid.uuid4()) for _ in range(55)]
    writes = []
    for n, match_id in enumerate(match_ids):
        lines = [(ANN, "ann", 1, 100 * (n % 7) + 100), (BOB, "bob", 2, 50)]
        if n == 0:
            lines.append((CID, "cid", 3, 0))
        writes.append(queue.submit(result(match_id, n, lines)))
    await asyncio.wait_for(asyncio.gather(*writes), 30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await queue.close()
    await client.aclose()
    app = await start_lobby_app(redis_url, database_url=fresh_database, persist=True)
    try:
        yield app, match_ids
    finally:
        await app.__aexit__(None, None, None)


def get(app: App, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.port}{path}", timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


async def http(app: App, path: str) -> tuple[int, Any]:
    return await asyncio.to_thread(get, app, path)


async def test_a_matchs_page_shows_its_ranking_and_duration(recorded: tuple[App, list[str]]) -> None:
    app, match_ids = recorded
    status, page = await http(app, f"/matches/{match_ids[0]}")
    assert status == 200
    assert (page["state"], page["reason"], page["duration_ms"], page["room"]) == ("finished", "kills", 30_000, "r0")
    assert [(line["name"], line["rank"], line["score"]) for line in page["ranking"]] == [
        ("ann", 1, 100), ("bob", 2, 50), ("cid", 3, 0)]


async def test_a_profile_has_the_best_match_the_last_ten_and_the_averages(recorded: tuple[App, list[str]]) -> None:
    app, match_ids = recorded
    status, profile = await http(app, f"/players/{ANN}/profile")
    assert status == 200
    assert (profile["name"], profile["matches"], profile["wins"]) == ("ann", 55, 55)
    scores = [100 * (n % 7) + 100 for n in range(55)]
    assert profile["averages"]["score"] == round(sum(scores) / 55, 2) and profile["averages"]["rank"] == 1.0
    assert profile["best_match"]["score"] == 700
    assert [m["match"] for m in profile["last_matches"]] == match_ids[::-1][:10]  # newest first


async def test_history_is_paged_fifty_at_a_time_newest_first(recorded: tuple[App, list[str]]) -> None:
    app, match_ids = recorded
    status, first = await http(app, f"/players/{ANN}/history")
    assert status == 200 and (first["page"], first["pages"], first["total"]) == (1, 2, 55)
    assert [m["match"] for m in first["matches"]] == match_ids[::-1][:50]
    status, second = await http(app, f"/players/{ANN}/history?page=2")
    assert status == 200 and [m["match"] for m in second["matches"]] == match_ids[::-1][50:]
    status, beyond = await http(app, f"/players/{ANN}/history?page=3")
    assert status == 200 and beyond["matches"] == []


async def test_the_leaderboard_is_rebuilt_from_postgres_at_start_and_names_its_players(
        recorded: tuple[App, list[str]]) -> None:
    app, _ = recorded
    status, board = await http(app, "/leaderboard?limit=3")
    assert status == 200
    total_ann = sum(100 * (n % 7) + 100 for n in range(55))
    assert [(p["rank"], p["name"], p["score"]) for p in board["players"]] == [
        (1, "ann", total_ann), (2, "bob", 50 * 55), (3, "cid", 0)]


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/matches/not-a-uuid", 400, "bad_match_id"),
    (f"/matches/{uuid.UUID(int=1)}", 404, "match_not_found"),
    ("/players/12345/profile", 400, "bad_player_id"),
    (f"/players/{uuid.UUID(int=2)}/profile", 404, "player_not_found"),
    (f"/players/{uuid.UUID(int=2)}/history", 404, "player_not_found"),
    (f"/players/{ANN}/history?page=0", 400, "bad_page"),
    (f"/players/{ANN}/history?page=-1", 400, "bad_page"),
    (f"/players/{ANN}/history?page=abc", 400, "bad_page"),
    (f"/players/{ANN}/history?page=99999999999", 400, "bad_page"),
    ("/leaderboard?limit=0", 400, "bad_limit"),
    ("/leaderboard?limit=101", 400, "bad_limit"),
    ("/leaderboard?limit=1e3", 400, "bad_limit"),
    ("/leaderboard?mode=chess", 400, "unknown_mode"),
    (f"/players/{ANN}/friends", 404, "not_found"),
])
async def test_bad_ids_and_paging_get_a_json_error_never_a_500(recorded: tuple[App, list[str]], path: str,
                                                              status: int, code: str) -> None:
    app, _ = recorded
    got_status, body = await http(app, path)
    assert (got_status, body["error"]) == (status, code)


async def test_with_postgres_unreachable_the_records_answer_503(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, database_url="postgresql://postgres@127.0.0.1:1/none", persist=True)
    try:
        status, body = await http(app, f"/players/{ANN}/profile")
        assert (status, body["error"]) == (503, "records_unavailable")
    finally:
        await app.__aexit__(None, None, None)


async def test_the_leaderboard_feed_sums_points_and_keeps_them_through_a_redis_outage(tmp_path: Path) -> None:
    server = LocalRedis.start(tmp_path / "redis", persist=False)
    client = aioredis.Redis.from_url(server.url)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    key = LobbyKeys(prefix, "arena").leaderboard
    feed = LeaderboardFeed(client, prefix)
    task = asyncio.get_running_loop().create_task(feed.run())

    async def score_becomes(expected: float) -> None:
        for _ in range(250):
            with contextlib.suppress(*OUTAGE):
                if await client.zscore(key, ANN) == expected:
                    return
            await asyncio.sleep(0.02)
        raise AssertionError(f"ann's score never became {expected}")

    try:
        for points in (100, 10, 10):
            feed.add("arena", "m1", ANN, points)
        feed.add("arena", "m1", BOB, 0)  # no points, but listed (as a rebuild from Postgres lists every player)
        await score_becomes(120)
        assert await client.zscore(key, BOB) == 0
        assert await feed.told("arena", ["m1", "m2"]) == {"m1": {ANN: 120, BOB: 0}, "m2": {}}
        server.stop()
        feed.add("arena", "m1", ANN, 100)  # while Redis is down
        await asyncio.sleep(0.3)
        server.restart()
        await score_becomes(100)  # the restarted Redis is empty: only what could not be written before
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        server.stop()
