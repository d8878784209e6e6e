"""Draining a node hands its event-driven matches to another node, not only arena matches: a dice match, a typing
race and a tic-tac-toe room with a line, formed on a-host while it is the only node, go on, after a drain with a
short deadline, on b-other with everyone's progress (lives and round, positions, the board and the line's order);
their players are told to `reconnect`, come back through b-other's lobby, finish there, and each match is recorded
once; a-host ends up idle."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from lobby.keys import LobbyKeys
from tests.clusterkit import (
    TICKROOM,
    Cluster,
    Message,
    child_environment,
    refusal,
    wait_nodes_surveyed,
    wait_until,
)
from tests.serverkit import lobby_prefix
from tests.test_games_cluster import (
    HOST,
    NODE_IDS,
    OTHER,
    TYPED,
    Player,
    back_with_their_progress,
    check_recorded_once,
    dice_progress,
    dice_round_one,
    every_match,
    fetch,
    get,
    type_before_the_kill,
    typing_progress,
)

ADMIN = "drain-test-admin-token-0123456789abcdef"
# Two lives (round 1 decided before the drain leaves the match running), no roll or turn running out while the
# match moves (60 s each), three tic-tac-toe boards (one before the drain, two after).
DRAIN_OPTIONS = {"dice": {"lives": 2, "roll_time_ms": 60000}, "typing": {"words": 5},
                 "tictactoe": {"turn_ms": 60000, "boards": 3}}
# Snapshots every 60 s: none is taken in these tests but the one the drain writes at its deadline, so what b-other
# restores is what the hand-off saved.
DRAIN_ARGS = ("--match-time-s", "45", "--end-linger-s", "0.5", "--snapshot-every-s", "60", "--reconnect-grace-s",
              "30", "--admin-token", ADMIN, "--game-options", orjson.dumps(DRAIN_OPTIONS).decode())
DEADLINE_S = 1  # how long the drained node lets its matches run before it hands them over (they will not end)
VIEW_KEYS = ("board", "x", "o", "turn", "turn_ends_ms", "board_no", "line", "players")




def admin_get(url: str) -> tuple[int, Any]:
    """GET an `/admin` endpoint with the operator's token (blocking: call it through `asyncio.to_thread`)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


async def told_to_reconnect(players: list[Player], timeout: float = 15.0) -> None:
    """Every player gets `{"type":"reconnect","reason":"drain"}` on their game connection, which then closes."""
    told = await asyncio.gather(*(player.wait_for(lambda m: m["type"] == "reconnect", timeout)
                                  for player in players))
    assert {message["reason"] for message in told} == {"drain"}, told
    for player in players:
        await player.close()


async def check_host_idle(cluster: Cluster, client: aioredis.Redis, prefix: str, modes: tuple[str, ...]) -> None:
    """a-host reports drained, hosts no room (for itself and for the lobby), has no player connected, is not ready
    and refuses new lobby connections."""
    assert await client.hget(f"{prefix}:node:{HOST}", "state") == "drained"

    async def no_rooms_nor_players() -> bool:
        status, stats = await get(cluster, HOST, "/stats")
        assert status == 200, stats
        return bool(stats["rooms"] == {} and stats["connections"] == 0)

    await wait_until(no_rooms_nor_players, 10, f"{HOST} with no room and no player")
    for mode in modes:
        assert await client.scard(LobbyKeys(prefix, mode).node_rooms(HOST)) == 0, mode
    status, ready = await get(cluster, HOST, "/readyz")
    assert status == 503 and ready["checks"]["draining"]["ok"] is False, ready
    status, view = await asyncio.to_thread(admin_get, f"{cluster[HOST].http}/admin")
    assert status == 200 and (view["node"]["state"], view["rooms"], view["players"]) == ("drained", {}, []), view
    status, code, _ = await refusal(f"{cluster[HOST].url}/lobby", Player("dice", "late", seed=0).token)
    assert (status, code) == (503, "node_draining")


async def match_ids(database_url: str, rooms: list[str]) -> dict[str, str]:
    """The match id Postgres holds for each room: recorded, behind the match's start on a-host, once each."""
    found: dict[str, str] = {}

    async def recorded() -> bool:
        rows = await fetch(database_url, "SELECT id, room_id FROM matches WHERE room_id = ANY($1::text[])", rooms)
        assert len(rows) == len({row["room_id"] for row in rows}), rows
        found.update({row["room_id"]: str(row["id"]) for row in rows})
        return set(found) == set(rooms)

    await wait_until(recorded, 10, f"the matches of rooms {rooms} in Postgres")
    return found


# -- a dice match and a typing race ----------------------------------------------------------------------------

@pytest.mark.timeout(60)
async def test_a_drained_node_hands_its_dice_match_and_typing_race_to_another_where_they_finish_with_everyones_progress(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    async with cluster_of(prefix, (HOST,), *DRAIN_ARGS) as host_only, asyncio.timeout(55):
        await wait_nodes_surveyed(client, prefix, (HOST,))
        dice = [Player("dice", f"dice{i}", seed=i) for i in range(2)]
        racers = [Player("typing", f"racer{i}", seed=10 + i) for i in range(2)]
        players = [*dice, *racers]
        await asyncio.gather(*(player.matched(host_only, HOST) for player in players))
        await asyncio.gather(*(player.enter(bot=False) for player in players))
        assert {player.found["node"] for player in players if player.found} == {HOST}
        rooms = {"dice": dice[0].room, "typing": racers[0].room}
        assert {player.room for player in dice} == {rooms["dice"]}
        assert {player.room for player in racers} == {rooms["typing"]}
        await asyncio.gather(
            *(player.wait_for(lambda m: m["type"] == "state" and m["round"] == 1, 10) for player in dice))
        await dice_round_one(dice)
        await type_before_the_kill(racers)
        assert dice[0].state is not None and racers[0].state is not None
        dice_before, typing_before = dice_progress(dice[0].state), typing_progress(racers[0].state)
        assert (dice_before[0], dice_before[1], sorted(dice_before[2].values())) == (2, 0, [1, 2])
        assert sorted((pos, errors) for _, _, pos, errors in typing_before.values()) == sorted(TYPED)
        matches = await match_ids(host_only.database_url, list(rooms.values()))

        async with cluster_of(prefix, (OTHER,), *DRAIN_ARGS) as other_only:
            await wait_nodes_surveyed(client, prefix, NODE_IDS)
            # `tickroom drain`, through Redis: one second for the matches to end (they will not), then hand-off.
            drain = await asyncio.create_subprocess_exec(
                TICKROOM, "drain", HOST, "--deadline-s", str(DEADLINE_S), "--redis-url", host_only.redis_url,
                "--lobby-prefix", prefix, "--log-format", "text", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=child_environment())
            try:
                await told_to_reconnect(players)
                out, err = await asyncio.wait_for(drain.communicate(), 20)
            finally:
                if drain.returncode is None:
                    drain.kill()
                    await drain.wait()
            assert drain.returncode == 0, (out, err)
            assert b"drained" in out, out
            await check_host_idle(host_only, client, prefix, ("dice", "typing"))

            await back_with_their_progress(other_only, players, rooms, dice_before, typing_before)

            # They play it out there: one result each, recorded once, by b-other, under the match id of a-host.
            ends = await asyncio.gather(*(player.play_out(25) for player in players))
            assert {end["match"] for end in ends[:2]} == {matches[rooms["dice"]]}
            assert {end["match"] for end in ends[2:]} == {matches[rooms["typing"]]}
            assert [end["reason"] for end in ends] == ["winner", "winner", "finished", "finished"]
            assert [error for player in players for error in player.errors] == []
            for group in (dice, racers):
                await check_recorded_once(other_only, group)
            assert [tuple(row) for row in await every_match(other_only)] == sorted(
                (room, "finished", OTHER) for room in rooms.values())
            # What b-other restored is the snapshot the drain wrote (no periodic one was taken).
            assert other_only.logged("restored from its snapshot")[OTHER] == 2, \
                other_only.logged("restored from its snapshot")
            for player in players:
                await player.close()
            assert other_only.problems() == []
        assert host_only.problems() == []


# -- tic-tac-toe with a line -----------------------------------------------------------------------------------

def board_view(view: Message) -> dict[str, Any]:
    """The game's part of a tic-tac-toe state or welcome view: the board, the markers, the turn, the line..."""
    return {key: view[key] for key in VIEW_KEYS}


async def mark(players: list[Player], cell: int) -> None:
    """The player whose turn it is marks `cell`; every player then sees the board with it (or the next board, when
    the move ended this one)."""
    view = players[0].state
    assert view is not None and view["turn"] is not None, view
    mover = next(player for player in players if player.you == view["turn"])
    board_no = view["board_no"]
    await mover.send({"type": "move", "cell": cell})
    await asyncio.gather(*(player.wait_for(
        lambda m: m["type"] == "state" and (m["board_no"] > board_no or m["board"][cell] != ""), 10)
        for player in players))


@pytest.mark.timeout(60)
async def test_a_drained_node_hands_its_tictactoe_room_to_another_with_the_same_board_and_line_order(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis) -> None:
    prefix = lobby_prefix()
    async with cluster_of(prefix, (HOST,), *DRAIN_ARGS) as host_only, asyncio.timeout(55):
        await wait_nodes_surveyed(client, prefix, (HOST,))
        players = [Player("tictactoe", f"ttt{i}", seed=20 + i) for i in range(4)]
        # Two start the room at once; the two others join it running, one after the other, at the back of the line.
        await asyncio.gather(*(player.matched(host_only, HOST) for player in players[:2]))
        await asyncio.gather(*(player.enter(bot=False) for player in players[:2]))
        for player in players[2:]:
            await player.matched(host_only, HOST)
            await player.enter(bot=False)
        assert {(player.room, player.found["node"]) for player in players if player.found} == {
            (players[0].room, HOST)}
        room = players[0].room
        pids = [player.you for player in players]
        await asyncio.gather(*(player.wait_for(
            lambda m: m["type"] == "state" and [e["p"] for e in m["line"]] == pids[2:], 10) for player in players))
        assert players[0].state is not None
        x, o = players[0].state["x"], players[0].state["o"]
        assert {x, o} == set(pids[:2]), players[0].state

        # Board 1: X takes the top row (O answers 3 and 4): O goes to the back of the line, the first in it takes O.
        for cell in (0, 3, 1, 4, 2):
            await mark(players, cell)
        # Board 2 under way: X in the center, the new O in a corner.
        for cell in (4, 0):
            await mark(players, cell)
        before = board_view(players[0].state)
        now_before = players[0].state["now"]  # the room clock at the last move
        assert (before["board_no"], before["x"], before["o"], before["turn"]) == (2, x, pids[2], x), before
        assert before["board"] == ["O", "", "", "", "X", "", "", "", ""], before
        assert before["line"] == [{"p": pids[3], "pos": 1}, {"p": o, "pos": 2}], before
        assert all(board_view(player.state) == before for player in players if player.state is not None)
        (match,) = (await match_ids(host_only.database_url, [room])).values()

        async with cluster_of(prefix, (OTHER,), *DRAIN_ARGS) as other_only:
            await wait_nodes_surveyed(client, prefix, NODE_IDS)
            # The operator's drain call over HTTP, with one second for the match to end (it will not).
            status, described = await asyncio.to_thread(
                admin_get, f"{host_only[HOST].http}/admin/drain?node={HOST}&deadline_s={DEADLINE_S}")
            assert status == 200 and described["state"] == "draining", described
            await told_to_reconnect(players)

            async def drained() -> bool:
                return await client.hget(f"{prefix}:node:{HOST}", "state") == "drained"

            await wait_until(drained, 15, f"{HOST} drained")
            await check_host_idle(host_only, client, prefix, ("tictactoe",))

            # Everyone back through b-other's lobby, into the same room there: same board, markers, turn and line.
            backs = await asyncio.gather(*(player.matched(other_only, OTHER, timeout=20) for player in players))
            assert {(back["room"], back["node"]) for back in backs} == {(room, OTHER)}, backs
            welcomes = await asyncio.gather(*(player.enter() for player in players))
            for player, welcome, pid in zip(players, welcomes, pids, strict=True):
                assert (welcome["state"], welcome["you"]) == ("running", pid), welcome
                assert board_view(welcome["view"]) == before, (player.name, welcome["view"], before)
            # The room clock went on while the room waited for the drain's deadline (nobody moved): the snapshot
            # took it as of its own time, not of the last move, so the turn's deadline kept its meaning.
            first = await players[0].wait_for(lambda m: m["type"] == "state", 5)
            assert first["now"] >= now_before + DEADLINE_S * 1000, (now_before, first["now"])

            # The bots play boards 2 and 3 out there: one result, recorded once, by b-other, under the same match id.
            ends = await asyncio.gather(*(player.play_out(25) for player in players))
            assert {(end["match"], end["reason"]) for end in ends} == {(match, "boards")}, ends
            assert [error for player in players for error in player.errors] == []
            await check_recorded_once(other_only, players)
            assert [tuple(row) for row in await every_match(other_only)] == [(room, "finished", OTHER)]
            assert other_only.logged("restored from its snapshot")[OTHER] == 1, \
                other_only.logged("restored from its snapshot")
            for player in players:
                await player.close()
            assert other_only.problems() == []
        assert host_only.problems() == []
