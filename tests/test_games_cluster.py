"""Every game through the lobby of two real `tickroom serve` processes on one Redis and one Postgres: players
matched through either node's lobby play whole matches with the game's own bot policy; each match is recorded
once, with one line per player and the game's figures; the leaderboard and the per-mode profile answer for them.
And recovery: a dice match and a typing race running on a node killed with -9 come back, with every player's
progress, on the other node (from Redis's snapshots, or from Postgres when Redis lost everything at the kill),
and finish there with one result."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from game.api import BotPolicy, GameDefinition
from lobby.keys import LobbyKeys
from server.rooms.catalog import installed_games
from tests.clusterkit import (
    Cluster,
    Message,
    forget_everything,
    http_json,
    open_ws,
    wait_nodes_surveyed,
    wait_until,
)
from tests.serverkit import lobby_prefix, new_token
from tests.test_bot_e2e import last_json_line, run_bot

# Node ids sort so that new rooms go to "a-host" while both nodes are equally loaded.
HOST, OTHER = "a-host", "b-other"
NODE_IDS = (HOST, OTHER)
GAMES = installed_games()
# Short games: five words to type, one life, two boards, a relay room idle after 10 s.
GAME_OPTIONS = {"typing": {"words": 5}, "dice": {"lives": 1, "roll_time_ms": 1000}, "tictactoe": {"boards": 2},
                "relay": {"idle_ms": 10000, "warn_ms": 2000}, "arena": {"kill_target": 3}}
SHORT_MATCHES = ("--match-time-s", "20", "--end-linger-s", "0.5", "--game-options", orjson.dumps(GAME_OPTIONS).decode())
# Players of each game, and how long its matches may take (from the first join to the last result in Postgres).
PLAYERS = {"dice": 3, "tictactoe": 3, "relay": 3, "typing": 3, "arena": 3}
MATCH_S = {"dice": 20, "tictactoe": 20, "relay": 25, "typing": 20, "arena": 25}
RANKING_KEYS = frozenset({"p", "id", "name", "rank", "score"})
TICK_S = 1 / 30  # how often a player asks its bot policy what to send (as the bot does: 30 Hz)




@dataclass
class Player:
    """One player, written from docs/protocol.md and docs/lobby.md: joins a lobby, follows `match_found` to its
    game, and plays with the game's own bot policy (or as the test tells it). Keeps what it was sent."""

    mode: str
    name: str
    seed: int
    player_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    policy: BotPolicy | None = None
    ws: ClientConnection | None = None
    found: Message | None = None
    welcome: Message | None = None
    state: Message | None = None  # the last state
    match_end: Message | None = None
    errors: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token = new_token(self.name, player_id=self.player_id)

    @property
    def definition(self) -> GameDefinition:
        return GAMES[self.mode]

    @property
    def room(self) -> str:
        assert self.found is not None, f"{self.name} was never matched"
        return str(self.found["room"])

    @property
    def you(self) -> int:
        assert self.welcome is not None, f"{self.name} was never welcomed"
        return int(self.welcome["you"])

    @property
    def result(self) -> Message:
        """The `match_end` this player got."""
        assert self.match_end is not None, f"{self.name} saw no match end"
        return self.match_end

    def own_line(self) -> Message:
        """This player's entry in the ranking of their `match_end`."""
        return next(entry for entry in self.result["ranking"] if entry["id"] == self.player_id)

    async def matched(self, cluster: Cluster, node_id: str, timeout: float = 15.0) -> Message:
        """Join the lobby of `node_id` (with the last match's ticket, if any) and wait for `match_found`."""
        lobby = await open_ws(f"{cluster[node_id].url}/lobby", self.token)
        try:
            join: dict[str, Any] = {"type": "join", "v": 1, "mode": self.mode}
            if self.found is not None:
                join["ticket"] = self.found["ticket"]
            await lobby.send(orjson.dumps(join).decode())
            async with asyncio.timeout(timeout):
                while True:
                    message: Message = orjson.loads(await lobby.recv())
                    assert message["type"] != "error", f"{self.name} refused by {node_id}'s lobby: {message}"
                    if message["type"] == "match_found":
                        self.found = message
                        return message
        finally:
            await lobby.close()

    async def enter(self, *, bot: bool = True) -> Message:
        """Into the game `match_found` named: hello, then its welcome (which the policy hears). Without `bot`,
        the player sends only what the test makes it send."""
        assert self.found is not None
        self.ws = await open_ws(self.found["url"], self.token)
        self.match_end, self.state = None, None
        self.policy = self.definition.bot(random.Random(self.seed)) if bot and self.definition.bot else None
        await self.ws.send('{"type":"hello","v":1}')
        welcome = await self.wait_for(lambda m: m["type"] in ("welcome", "error"), 10)
        assert welcome["type"] == "welcome", f"{self.name} refused at the game: {welcome}"
        self.welcome = welcome
        return welcome

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(orjson.dumps(message).decode())

    async def receive(self, timeout: float) -> Message | None:
        """The next message (None after `timeout` s): kept, and told to the policy, whose answer is sent."""
        assert self.ws is not None
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            return None
        message: Message = orjson.loads(raw)
        kind = message["type"]
        if kind == "state":
            self.state = message
        elif kind == "welcome":
            self.welcome = message
        elif kind == "match_end":
            self.match_end = message
        elif kind == "error":
            self.errors.append(message)
        if self.policy is not None:
            for answer in self.policy.on_message(message, now_ms()):
                await self.send(answer)
        return message

    async def wait_for(self, predicate: Callable[[Message], bool], timeout: float) -> Message:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.receive(timeout)
                if message is not None and predicate(message):
                    return message

    async def play_out(self, timeout: float, *, talk_for_s: float | None = None) -> Message:
        """Play with the policy until the match ends (its `match_end`); with `talk_for_s`, the policy only acts
        that long, then the player just listens (a relay room goes idle)."""
        quiet_at = None if talk_for_s is None else time.monotonic() + talk_for_s
        next_tick = time.monotonic()
        async with asyncio.timeout(timeout):
            while self.match_end is None:
                await self.receive(max(0.0, next_tick - time.monotonic()))
                if time.monotonic() < next_tick:
                    continue
                next_tick = max(next_tick + TICK_S, time.monotonic())  # late: no burst to catch up
                if self.policy is not None and (quiet_at is None or time.monotonic() < quiet_at):
                    for message in self.policy.on_tick(now_ms()):
                        await self.send(message)
        return self.result

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.close()
            self.ws = None


def now_ms() -> int:
    return int(time.monotonic() * 1000)


def figures_of(entry: Message) -> dict[str, Any]:
    """A `match_end` ranking entry's figures: everything but the host's own keys."""
    return {key: value for key, value in entry.items() if key not in RANKING_KEYS}


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def results_in_postgres(database_url: str, rooms: list[str]) -> dict[str, list[asyncpg.Record]]:
    """Every match row of these rooms, by room (one room hosts one lobby match)."""
    rows = await fetch(database_url, "SELECT id, room_id, mode, node, state, end_reason FROM matches "
                                     "WHERE room_id = ANY($1::text[])", rooms)
    by_room: dict[str, list[asyncpg.Record]] = {room: [] for room in rooms}
    for row in rows:
        by_room[row["room_id"]].append(row)
    return by_room


async def lines_in_postgres(database_url: str, match_ids: list[str]) -> dict[tuple[str, str], asyncpg.Record]:
    rows = await fetch(database_url, "SELECT match_id, player_id, rank, score, figures FROM match_players "
                                     "WHERE match_id = ANY($1::uuid[])", [uuid.UUID(m) for m in match_ids])
    return {(str(row["match_id"]), str(row["player_id"])): row for row in rows}


async def every_match(cluster: Cluster) -> list[asyncpg.Record]:
    """Every match row of the deployment (its database is the test's own)."""
    return await fetch(cluster.database_url, "SELECT room_id, state, node FROM matches ORDER BY room_id")


async def get(cluster: Cluster, node_id: str, path: str) -> tuple[int, Any]:
    return await asyncio.to_thread(http_json, f"{cluster[node_id].http}{path}")


async def check_recorded_once(cluster: Cluster, players: list[Player]) -> dict[str, list[Player]]:
    """Each match the players saw end is in Postgres once, finished, with one line per player seated in it
    holding their rank, score and the game's figures as `match_end` gave them. The players by match id."""
    by_match: dict[str, list[Player]] = {}
    for player in players:
        by_match.setdefault(player.result["match"], []).append(player)
    rooms = {player.room: player.result["match"] for player in players}
    assert len(rooms) == len(by_match), f"rooms {rooms} and matches {list(by_match)} do not pair up"

    async def all_finished() -> bool:
        found = await results_in_postgres(cluster.database_url, list(rooms))
        return all(len(rows) == 1 and rows[0]["state"] == "finished" for rows in found.values())

    await wait_until(all_finished, 10, "one finished match row per room")
    found = await results_in_postgres(cluster.database_url, list(rooms))
    lines = await lines_in_postgres(cluster.database_url, list(by_match))
    mode = players[0].mode
    for room, match_id in rooms.items():
        (row,) = found[room]
        assert (str(row["id"]), row["mode"], row["state"]) == (match_id, mode, "finished")
        seated = by_match[match_id]
        assert sorted(pid for mid, pid in lines if mid == match_id) == sorted(p.player_id for p in seated)
        ranking = {entry["id"]: entry for entry in seated[0].result["ranking"]}
        assert set(ranking) == {p.player_id for p in seated}
        for player in seated:
            line, entry = lines[(match_id, player.player_id)], ranking[player.player_id]
            figures = orjson.loads(line["figures"])
            assert set(figures) == set(GAMES[mode].figures), figures
            assert (line["rank"], line["score"], figures) == (entry["rank"], entry["score"], figures_of(entry))
    return by_match


async def check_leaderboard_and_profiles(cluster: Cluster, players: list[Player]) -> None:
    """`/leaderboard?mode=` on each node ranks every player who scored by their total; `/players/ID/profile?mode=`
    on each node has each player's matches of the mode, the last one first."""
    mode = players[0].mode
    totals = {player.player_id: player.own_line()["score"] for player in players}

    async def board_has_everyone(node_id: str) -> bool:
        status, board = await get(cluster, node_id, f"/leaderboard?mode={mode}&limit=100")
        assert status == 200, board
        listed = {entry["id"]: entry["score"] for entry in board["players"]}
        # A player who never scored may be listed (at 0) or not: the board hears of points, not of players. Points
        # reach it within the feed's coalescing time (200 ms) after they were scored: the board must come to the
        # totals, and never list anyone who has none.
        assert all(pid in totals for pid in listed), (listed, totals)
        return (all(totals[pid] == score for pid, score in listed.items())
                and all(pid in listed for pid, total in totals.items() if total))

    for node_id in NODE_IDS:
        await wait_until(partial(board_has_everyone, node_id), 10,
                         f"{node_id}'s {mode} leaderboard naming every player who scored")
        for player in players:
            status, profile = await get(cluster, node_id, f"/players/{player.player_id}/profile?mode={mode}")
            assert status == 200, profile
            entry = player.own_line()
            assert (profile["mode"], profile["matches"]) == (mode, 1)
            assert profile["last"][0]["match"] == player.result["match"]
            assert (profile["last"][0]["rank"], profile["last"][0]["score"], profile["last"][0]["figures"]) == (
                entry["rank"], entry["score"], figures_of(entry))
            assert set(profile["average"]["figures"]) == set(GAMES[mode].figures)


# -- a) every game, matched through both lobbies, played out -----------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["dice", "tictactoe", "relay", "typing", "arena"])
async def test_players_matched_through_two_lobbies_play_whole_matches_recorded_once_with_the_games_figures(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis, mode: str) -> None:
    prefix = lobby_prefix()
    async with cluster_of(prefix, NODE_IDS, *SHORT_MATCHES) as cluster:
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        async with asyncio.timeout(MATCH_S[mode] + 15):
            players = [Player(mode, f"{mode[:4]}{i}", seed=i) for i in range(PLAYERS[mode])]
            # Half through each node's lobby.
            await asyncio.gather(*(player.matched(cluster, NODE_IDS[i % 2]) for i, player in enumerate(players)))
            await asyncio.gather(*(player.enter() for player in players))
            talk = 3.0 if mode == "relay" else None  # then the relay room goes idle and ends
            ends = await asyncio.gather(*(player.play_out(MATCH_S[mode], talk_for_s=talk) for player in players))
            for player in players:
                await player.close()
            assert {end["reason"] for end in ends} <= {"dice": {"winner"}, "tictactoe": {"boards"},
                                                       "relay": {"idle"}, "typing": {"finished"},
                                                       "arena": {"kills", "time"}}[mode], ends
            assert [error for player in players for error in player.errors] == []
            # One room for all, hosted by one node: the players of the other node's lobby were sent across.
            (room,) = {player.room for player in players}
            assert len({player.found["node"] for player in players if player.found}) == 1
            await check_recorded_once(cluster, players)
            assert [(row["room_id"], row["state"]) for row in await every_match(cluster)] == [(room, "finished")]
            await check_leaderboard_and_profiles(cluster, players)
        assert cluster.problems() == []


# -- b) recovery of a turn-based game and of a race, on the other node -----------------------------------------------

# Two lives (a round decided before the kill leaves the match running) and no roll for anyone at a deadline while
# the node is dead (60 s to roll; the bots roll within 1.5 s).
RECOVERY_OPTIONS = {"dice": {"lives": 2, "roll_time_ms": 60000}, "typing": {"words": 5}}
RECOVERY_ARGS = ("--match-time-s", "45", "--end-linger-s", "0.5", "--snapshot-every-s", "1", "--reconnect-grace-s",
                 "30", "--game-options", orjson.dumps(RECOVERY_OPTIONS).decode())
TYPED = ((7, 0), (4, 1))  # each racer's characters typed right, and wrong keys, before the kill


async def dice_round_one(players: list[Player]) -> None:
    """Both roll in round 1 (and in its roll-offs) until round 2 is on, with one life lost."""
    rolled: set[tuple[str, int, int]] = set()

    def in_round_two(player: Player) -> bool:
        return player.state is not None and player.state["round"] == 2 and player.state["rolloff"] == 0

    async with asyncio.timeout(10):
        while not all(in_round_two(player) for player in players):
            for player in players:
                state = player.state
                if state is None or state["round"] != 1 or player.you not in state["to_roll"]:
                    continue
                throw = (player.name, state["round"], state["rolloff"])
                if throw not in rolled:
                    rolled.add(throw)
                    await player.send({"type": "roll"})
            for player in players:
                await player.receive(0.05)


async def type_before_the_kill(players: list[Player]) -> None:
    """Each racer types as TYPED says (the text's first characters, then wrong keys), then stops."""
    async with asyncio.timeout(10):
        for player in players:
            await player.wait_for(lambda m: m["type"] == "state" and m.get("ends_ms") is not None, 10)
        for player, (right, wrong) in zip(players, TYPED, strict=True):
            assert player.welcome is not None
            for char in player.welcome["text"][:right] + "#" * wrong:  # the text is a-z and spaces only
                await player.send({"type": "key", "c": char})
        typed = {player.you: progress for player, progress in zip(players, TYPED, strict=True)}
        for player in players:
            await player.wait_for(lambda m: m["type"] == "state" and {
                entry["p"]: (entry["pos"], entry["errors"]) for entry in m["players"]} == typed, 10)


async def back_with_their_progress(other: Cluster, players: list[Player], rooms: dict[str, str],
                                   dice_before: tuple[int, int, dict[int, int]],
                                   typing_before: dict[int, tuple[int, int, int, int]]) -> None:
    """Each player comes back through `other`'s lobby with their ticket, into their own match there: the dice
    match's round and everyone's lives, the race's text and every racer's place, as before."""
    backs = await asyncio.gather(*(player.matched(other, OTHER, timeout=20) for player in players))
    for player, back in zip(players, backs, strict=True):
        assert (back["room"], back["node"]) == (rooms[player.mode], OTHER), back
    welcomes = await asyncio.gather(*(player.enter() for player in players))
    for welcome in welcomes:
        assert welcome["state"] == "running", welcome
    dice = [player for player in players if player.mode == "dice"]
    racers = [player for player in players if player.mode == "typing"]
    for player in dice:
        assert player.welcome is not None
        assert dice_progress(player.welcome["view"]) == dice_before, (player.welcome["view"], dice_before)
    for player in racers:  # the room's first state after the welcome
        assert player.welcome is not None and racers[0].welcome is not None
        assert player.welcome["text"] == racers[0].welcome["text"]
        state = player.state or await player.wait_for(lambda m: m["type"] == "state", 5)
        assert typing_progress(state) == typing_before, (state, typing_before)


def dice_progress(view: Message) -> tuple[int, int, dict[int, int]]:
    """(round, roll-off, lives left by pid) as a dice state or welcome view shows it."""
    return view["round"], view["rolloff"], {entry["p"]: entry["lives"] for entry in view["players"]}


def typing_progress(state: Message) -> dict[int, tuple[int, int, int, int]]:
    """Each racer's (word, char, pos, errors) as a typing state shows it."""
    return {entry["p"]: (entry["word"], entry["char"], entry["pos"], entry["errors"]) for entry in state["players"]}


async def saved_progress(client: aioredis.Redis, database_url: str, prefix: str, rooms: dict[str, str]) -> bool:
    """Whether the Redis snapshot and the Postgres progress of both rooms hold the progress made before the kill
    (round 2 of the dice match; the racers' positions)."""
    dice_raw = await client.get(LobbyKeys(prefix, "dice").room_snapshot(rooms["dice"]))
    typing_raw = await client.get(LobbyKeys(prefix, "typing").room_snapshot(rooms["typing"]))
    if dice_raw is None or typing_raw is None:
        return False
    dice, typing = orjson.loads(dice_raw)["game"], orjson.loads(typing_raw)["game"]
    if (dice["turn"]["round"], dice["turn"]["rolloff"]) != (2, 0) or \
            sorted((p["pos"], p["errors"]) for p in typing["players"]) != sorted(TYPED):
        return False
    rows = await fetch(database_url, "SELECT m.room_id, mp.game, pp.state FROM matches m "
                                     "JOIN match_progress mp ON mp.match_id = m.id "
                                     "JOIN player_positions pp ON pp.match_id = m.id "
                                     "WHERE m.room_id = ANY($1::text[]) AND m.state = 'running'", list(rooms.values()))
    rounds = {orjson.loads(row["game"])["turn"]["round"] for row in rows if row["room_id"] == rooms["dice"]}
    lost = sorted(orjson.loads(row["state"])["rounds_lost"] for row in rows if row["room_id"] == rooms["dice"])
    typed = sorted((orjson.loads(row["state"])["pos"], orjson.loads(row["state"])["errors"])
                   for row in rows if row["room_id"] == rooms["typing"])
    return rounds == {2} and lost == [0, 1] and typed == sorted(TYPED)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flush", [False, True], ids=["kill", "kill-and-flush"])
async def test_a_dice_match_and_a_typing_race_on_a_killed_node_go_on_with_everyones_progress_on_the_other(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis, flush: bool) -> None:
    prefix = lobby_prefix()
    # Both matches on a-host, alone when they are formed; then b-other joins, and a-host is killed.
    async with cluster_of(prefix, (HOST,), *RECOVERY_ARGS) as host_only, asyncio.timeout(55):
        await wait_nodes_surveyed(client, prefix, (HOST,))
        dice = [Player("dice", f"dice{i}", seed=i) for i in range(2)]
        racers = [Player("typing", f"racer{i}", seed=10 + i) for i in range(2)]
        players = [*dice, *racers]
        await asyncio.gather(*(player.matched(host_only, HOST) for player in players))
        await asyncio.gather(*(player.enter(bot=False) for player in players))
        assert {player.found["node"] for player in players if player.found} == {HOST}
        rooms = {"dice": dice[0].room, "typing": racers[0].room}
        await asyncio.gather(
            *(player.wait_for(lambda m: m["type"] == "state" and m["round"] == 1, 10) for player in dice))
        await dice_round_one(dice)
        await type_before_the_kill(racers)
        assert dice[0].state is not None and racers[0].state is not None
        dice_before, typing_before = dice_progress(dice[0].state), typing_progress(racers[0].state)
        assert sorted(dice_before[2].values()) == [1, 2]
        await wait_until(lambda: saved_progress(client, host_only.database_url, prefix, rooms), 10,
                         "the progress in Redis's snapshots and in Postgres")
        matches = {row["room_id"]: str(row["id"]) for row in await fetch(
            host_only.database_url, "SELECT id, room_id FROM matches WHERE room_id = ANY($1::text[])",
            list(rooms.values()))}

        async with cluster_of(prefix, (OTHER,), *RECOVERY_ARGS) as other_only:
            await wait_nodes_surveyed(client, prefix, NODE_IDS)
            await host_only.kill(HOST)
            if flush:
                assert await forget_everything(client, prefix) > 0
            for player in players:
                await player.close()

            await back_with_their_progress(other_only, players, rooms, dice_before, typing_before)

            # Then they play it out there: one result each, recorded once, by b-other, under the same match id.
            ends = await asyncio.gather(*(player.play_out(25) for player in players))
            assert {end["match"] for end in ends[:2]} == {matches[rooms["dice"]]}
            assert {end["match"] for end in ends[2:]} == {matches[rooms["typing"]]}
            assert [end["reason"] for end in ends] == ["winner", "winner", "finished", "finished"]
            for group in (dice, racers):
                await check_recorded_once(other_only, group)
            assert [tuple(row) for row in await every_match(other_only)] == sorted(
                (room, "finished", OTHER) for room in rooms.values())
            # Every roll of the dice match is in its event log once, numbered 1, 2, 3...: as many as were thrown.
            seqs = [row["seq"] for row in await fetch(
                other_only.database_url, "SELECT seq FROM match_events WHERE match_id = $1 ORDER BY seq",
                uuid.UUID(matches[rooms["dice"]]))]
            thrown = sum(entry["rolls"] for entry in ends[0]["ranking"])
            assert seqs == list(range(1, thrown + 1)), (seqs, thrown)
            restored = "restored from Postgres" if flush else "restored from its snapshot"
            assert other_only.logged(restored)[OTHER] == 2, other_only.logged(restored)
            for player in players:
                await player.close()
        assert host_only.problems() == []


# -- the bot itself, through both lobbies ------------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["dice", "typing"])
async def test_tickroom_bot_through_both_lobbies_plays_matches_each_recorded_once(
        cluster_of: Callable[..., Cluster], client: aioredis.Redis, mode: str) -> None:
    """`tickroom bot --mode MODE --lobby`, one run against each node's lobby, together: the rooms they play are
    recorded once each, every finished one with a line per player and the game's figures."""
    prefix = lobby_prefix()
    async with cluster_of(prefix, NODE_IDS, *SHORT_MATCHES) as cluster, asyncio.timeout(45):
        await wait_nodes_surveyed(client, prefix, NODE_IDS)
        runs = await asyncio.gather(*(run_bot("--url", cluster[node_id].url, "--lobby", "--mode", mode, "--bots", "3",
                                              "--duration", "10", "--ramp", "0.5", "--json", "--quiet", timeout=30)
                                      for node_id in NODE_IDS))
        summaries = []
        for code, out, err in runs:
            assert code == 0, err
            summaries.append(last_json_line(out))
        assert all(summary["matches"] >= 1 and summary["disconnects"] == 0 for summary in summaries), summaries
        rooms = await every_match(cluster)
        assert len({row["room_id"] for row in rooms}) == len(rooms), "a room recorded twice"
        finished = [str(row["room_id"]) for row in rooms if row["state"] == "finished"]
        assert len(finished) >= max(summary["matches"] for summary in summaries), (rooms, summaries)
        lines = await fetch(cluster.database_url, "SELECT m.room_id, mp.rank, mp.figures FROM match_players mp "
                                                  "JOIN matches m ON m.id = mp.match_id WHERE m.state = 'finished'")
        assert {row["room_id"] for row in lines} == set(finished)
        for row in lines:
            if row["rank"] is not None:  # a player who left before the start has no line of the result
                assert set(orjson.loads(row["figures"])) == set(GAMES[mode].figures), row
        print(f"{mode}: {[(s['matched'], s['matches'], s['error_codes']) for s in summaries]}, "
              f"rooms {[(row['state'], row['node']) for row in rooms]}")
        assert cluster.problems() == []
