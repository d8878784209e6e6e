"""A player's profile per mode (`GET /players/ID/profile?mode=MODE`): their finished matches of that mode only,
the best line, the last ten, the averages of the score and of every figure the game records, the way to their
history of the mode (`GET /players/ID/history?mode=MODE`); and, without a mode, the arena's profile with the
fields it always had, old results (kills and deaths only in columns) included."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from persistence.migrate import migrate_url
from persistence.writebehind import APPLY
from server.app import App
from tests.serverkit import start_lobby_app
from tests.test_records_http import http
from tests.test_writebehind import T0_MS

ANN, BOB, NEWCOMER = (str(uuid.UUID(int=0xF11E + n)) for n in range(3))
MINUTE_MS = 60_000


@dataclass(frozen=True)
class Line:
    """One player's line of a result, as the room writes it (`Room._result_lines`)."""

    player: str
    name: str
    rank: int
    score: int
    figures: dict[str, int | float]


def result(match_id: str, mode: str, n: int, lines: list[Line], *, cancelled: bool = False) -> dict[str, Any]:
    """The `match_result` write a room makes for match number `n` (ended n minutes after T0)."""
    start_ms = T0_MS + MINUTE_MS * n
    write: dict[str, Any] = {
        "op": "match_result", "match": match_id, "room": f"{mode}-{n}", "mode": mode, "node": "n1",
        "created_ms": start_ms, "started_ms": start_ms + 1_000, "ended_ms": start_ms + 31_000,
        "reason": "cancelled" if cancelled else "finished",
        "players": [{"id": line.player, "name": line.name, "order": order, "joined_ms": start_ms, "left_ms": None,
                     "rank": line.rank, "score": line.score, "figures": line.figures}
                    for order, line in enumerate(lines, start=1)]}
    if cancelled:
        write["cancelled"] = True
    return write


def ended_at(n: int) -> str:
    return datetime.fromtimestamp((T0_MS + MINUTE_MS * n + 31_000) / 1000, UTC).isoformat()


# Ann's typing races: (rank, score, wpm, accuracy, finished); Bob is in each, with the other rank.
RACES = [(1, 62, 62.4, 0.97, 1), (2, 25, 51.0, 0.912, 0), (1, 71, 70.6, 0.99, 1), (2, 40, 40.2, 0.95, 1),
         (1, 55, 55.1, 0.93, 1), (1, 60, 59.8, 0.98, 1), (2, 33, 33.3, 0.9, 1), (1, 48, 48.0, 0.96, 1),
         (2, 20, 41.5, 0.88, 0), (1, 66, 66.2, 0.975, 1), (1, 58, 58.3, 0.94, 1), (2, 44, 44.4, 0.92, 1)]
# Ann's dice matches: (rank, score, rounds_lost, rolls).
DICE = [(1, 10, 2, 9), (2, 0, 3, 7)]


@dataclass
class Recorded:
    app: App
    races: list[str]  # the typing matches, oldest first
    dice: list[str]
    arena: list[str]  # an arena match from before figures were kept, then one from after


@pytest.fixture
async def recorded(fresh_database: str, redis_url: str) -> AsyncIterator[Recorded]:
    """Ann's results in three modes, written by the write-behind's own `match_result`, then a node on them."""
    await migrate_url(fresh_database)
    races, dice, arena = ([str(uuid.uuid4()) for _ in rows] for rows in (RACES, DICE, range(2)))
    writes = []
    n = 0
    for match_id, (rank, score, wpm, accuracy, finished) in zip(races, RACES, strict=True):
        writes.append(result(match_id, "typing", n, [
            Line(ANN, "ann", rank, score, {"wpm": wpm, "accuracy": accuracy, "finished": finished}),
            Line(BOB, "bob", 3 - rank, 30, {"wpm": 30.0, "accuracy": 0.9, "finished": 1})]))
        n += 1
    for match_id, (rank, score, rounds_lost, rolls) in zip(dice, DICE, strict=True):
        writes.append(result(match_id, "dice", n, [
            Line(ANN, "ann", rank, score, {"rounds_lost": rounds_lost, "rolls": rolls}),
            Line(BOB, "bob", 3 - rank, 10 - score, {"rounds_lost": 3, "rolls": 8})]))
        n += 1
    # A cancelled race counts nowhere (its lines have no rank: nobody played it out).
    cancelled = result(str(uuid.uuid4()), "typing", n, [])
    cancelled.update(cancelled=True, players=[{"id": ANN, "name": "ann", "order": 1, "joined_ms": T0_MS}])
    writes.append(cancelled)
    n += 1
    for match_id, (kills, deaths, score) in zip(arena, [(4, 1, 400), (2, 3, 200)], strict=True):
        writes.append(result(match_id, "arena", n, [
            Line(ANN, "ann", 1, score, {"kills": kills, "deaths": deaths}),
            Line(BOB, "bob", 2, 0, {"kills": 0, "deaths": 4})]))
        n += 1
    conn = await asyncpg.connect(fresh_database)
    try:
        for write in writes:
            async with conn.transaction():
                await APPLY["match_result"](conn, write)
        # The first arena match as a node before migration 005 recorded it: kills and deaths in columns only.
        await conn.execute("UPDATE match_players SET figures = '{}' WHERE match_id = $1", uuid.UUID(arena[0]))
    finally:
        await conn.close()
    app = await start_lobby_app(redis_url, database_url=fresh_database, persist=True)
    try:
        yield Recorded(app, races, dice, arena)
    finally:
        await app.__aexit__(None, None, None)


async def test_a_typing_profile_has_that_modes_matches_best_line_last_ten_and_averages(recorded: Recorded) -> None:
    status, profile = await http(recorded.app, f"/players/{ANN}/profile?mode=typing")
    assert status == 200
    assert (profile["player"], profile["name"], profile["mode"]) == (ANN, "ann", "typing")
    assert profile["matches"] == len(RACES) and profile["wins"] == sum(1 for race in RACES if race[0] == 1)
    best = RACES.index(max(RACES, key=lambda race: race[1]))
    assert profile["best"] == {"match": recorded.races[best], "ended_at": ended_at(best), "rank": 1, "score": 71,
                               "figures": {"wpm": 70.6, "accuracy": 0.99, "finished": 1}}
    newest_first = list(range(len(RACES)))[::-1][:10]
    assert [line["match"] for line in profile["last"]] == [recorded.races[n] for n in newest_first]
    for line, n in zip(profile["last"], newest_first, strict=True):
        rank, score, wpm, accuracy, finished = RACES[n]
        assert line == {"match": recorded.races[n], "ended_at": ended_at(n), "rank": rank, "score": score,
                        "figures": {"wpm": wpm, "accuracy": accuracy, "finished": finished}}

    def mean(column: int) -> float:
        return round(sum(race[column] for race in RACES) / len(RACES), 2)

    assert profile["average"] == {"score": mean(1), "figures": {"wpm": mean(2), "accuracy": mean(3),
                                                                "finished": mean(4)}}
    assert profile["history"] == f"/players/{ANN}/history?mode=typing&page=1"


async def test_a_dice_profile_counts_only_dice_and_its_own_figures(recorded: Recorded) -> None:
    status, profile = await http(recorded.app, f"/players/{ANN}/profile?mode=dice")
    assert status == 200
    assert (profile["mode"], profile["matches"], profile["wins"]) == ("dice", 2, 1)
    assert profile["best"]["match"] == recorded.dice[0] and profile["best"]["figures"] == {"rounds_lost": 2,
                                                                                          "rolls": 9}
    assert [line["match"] for line in profile["last"]] == recorded.dice[::-1]
    assert profile["average"] == {"score": 5.0, "figures": {"rounds_lost": 2.5, "rolls": 8.0}}
    # The fields of the arena's profile, over the dice matches: no kills or deaths in dice.
    assert profile["averages"] == {"kills": None, "deaths": None, "score": 5.0, "rank": 1.5}
    assert [line["match"] for line in profile["last_matches"]] == recorded.dice[::-1]


async def test_without_a_mode_the_profile_is_the_arenas_with_the_fields_it_always_had(recorded: Recorded) -> None:
    status, default = await http(recorded.app, f"/players/{ANN}/profile")
    assert status == 200
    _, arena = await http(recorded.app, f"/players/{ANN}/profile?mode=arena")
    assert default == arena and default["mode"] == "arena"
    # Every field the profile promised before there were other games, over the arena's matches only.
    assert (default["matches"], default["wins"]) == (2, 2)
    assert default["averages"] == {"kills": 3.0, "deaths": 2.0, "score": 300.0, "rank": 1.0}
    assert default["best_match"]["match"] == recorded.arena[0] and default["best_match"]["score"] == 400
    assert [line["match"] for line in default["last_matches"]] == recorded.arena[::-1]
    assert {key for key in default["best_match"]} >= {
        "match", "room", "mode", "started_at", "ended_at", "reason", "duration_ms", "players", "rank", "kills",
        "deaths", "score"}
    # The old result's figures are its columns.
    assert default["best"]["figures"] == {"kills": 4, "deaths": 1}
    assert default["average"] == {"score": 300.0, "figures": {"kills": 3.0, "deaths": 2.0}}


async def test_history_filtered_by_mode_is_where_the_profile_points(recorded: Recorded) -> None:
    _, profile = await http(recorded.app, f"/players/{ANN}/profile?mode=dice")
    status, history = await http(recorded.app, profile["history"])
    assert status == 200
    assert (history["mode"], history["total"], history["pages"]) == ("dice", 2, 1)
    assert [line["match"] for line in history["matches"]] == recorded.dice[::-1]
    assert history["matches"][0]["figures"] == {"rounds_lost": 3, "rolls": 7}
    # Without a mode, every mode's finished matches, as before (the cancelled race is in none).
    status, everything = await http(recorded.app, f"/players/{ANN}/history")
    assert status == 200 and everything["mode"] is None
    assert everything["total"] == len(RACES) + len(DICE) + 2
    assert {line["mode"] for line in everything["matches"]} == {"typing", "dice", "arena"}


async def test_a_player_who_never_played_the_mode_has_an_empty_profile_of_it(recorded: Recorded) -> None:
    status, profile = await http(recorded.app, f"/players/{ANN}/profile?mode=tictactoe")
    assert status == 200
    assert (profile["matches"], profile["wins"], profile["best"], profile["last"]) == (0, 0, None, [])
    assert profile["average"] == {"score": None, "figures": {}}
    assert (profile["best_match"], profile["last_matches"]) == (None, [])
    status, body = await http(recorded.app, f"/players/{NEWCOMER}/profile?mode=typing")
    assert (status, body["error"]) == (404, "player_not_found")


@pytest.mark.parametrize("path", [f"/players/{ANN}/profile?mode=chess", f"/players/{ANN}/history?mode=chess&page=1",
                                  f"/players/{NEWCOMER}/profile?mode=chess"])
async def test_an_unknown_mode_is_refused_as_the_leaderboard_refuses_it(recorded: Recorded, path: str) -> None:
    (status, body), (board_status, board_body) = await asyncio.gather(
        http(recorded.app, path), http(recorded.app, "/leaderboard?mode=chess"))
    assert (status, body["error"]) == (400, "unknown_mode")
    assert (status, body) == (board_status, board_body)
