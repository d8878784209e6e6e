"""Rooms over real connections: the 66 Hz tick, encode-once broadcast, lifecycle, and crash isolation."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from game.arena import ArenaGame
from tests.serverkit import (
    closed_with,
    is_event,
    is_type,
    join_game,
    new_token,
    recv_until,
    start_app,
    variant,
    wait_for,
)


async def collect_states(ws: ClientConnection, seconds: float) -> list[tuple[float, int, str]]:
    """(arrival time, tick, raw text) of every state received during `seconds`."""
    states = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(ws.recv(), 2.0)
        assert isinstance(raw, str)
        if raw.startswith('{"type":"state"'):
            states.append((time.monotonic(), orjson.loads(raw)["tick"], raw))
    return states


async def test_a_room_of_five_ticks_at_66_hz_and_every_player_gets_every_tick() -> None:
    app = await start_app()
    try:
        players = [await join_game(app, "rate-5") for _ in range(5)]
        assert players[-1][1]["state"] == "running"
        results = await asyncio.gather(*(collect_states(ws, 10.0) for ws, _ in players))
        for states in results:
            (t0, first, _), (t1, last, _) = states[0], states[-1]
            rate = (last - first) / (t1 - t0)
            assert 66.67 * 0.98 <= rate <= 66.67 * 1.02, f"{rate:.2f} ticks/s"
            ticks = [tick for _, tick, _ in states]
            assert ticks == list(range(first, last + 1)), "a player missed ticks"
        # Encode once: every player received the very same bytes for a given tick...
        by_tick = [{tick: raw for _, tick, raw in states} for states in results]
        common = set.intersection(*(set(d) for d in by_tick))
        assert len(common) > 600
        for tick in common:
            assert len({d[tick] for d in by_tick}) == 1
        # ...and the room encoded one state per tick, not one per player.
        assert app.node is not None
        stats = orjson.loads(await app.node.stats())["rooms"]["rate-5"]
        assert stats["state_encodes"] == stats["ticks"]
        for ws, _ in players:
            await ws.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_inputs_move_the_player_and_are_acknowledged_by_seq_in_state() -> None:
    app = await start_app()
    try:
        ws, welcome = await join_game(app, "ack-1")
        me = welcome["you"]
        first = await recv_until(ws, is_type("state"))
        x0 = next(p for p in first["players"] if p["p"] == me)["x"]
        await ws.send('{"type":"input","seq":7,"dx":1,"dy":0}')
        acked = await recv_until(ws, lambda m: m["type"] == "state" and any(
            p["p"] == me and p["seq"] >= 7 for p in m["players"]), timeout=1.0)
        later = await recv_until(ws, lambda m: m["type"] == "state" and m["tick"] >= acked["tick"] + 10)
        x1 = next(p for p in later["players"] if p["p"] == me)["x"]
        assert x1 > x0 or x0 >= 999.9
        await ws.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_a_match_goes_through_countdown_running_and_ends_with_a_ranking_then_closes() -> None:
    app = await start_app(countdown_s=0.3, match_time_s=1.0, end_linger_s=0.3)
    try:
        names = ["ann", "bob", "cyd"]
        players = [await join_game(app, "life-1", token=new_token(n)) for n in names]
        ws = players[0][0]
        countdown = await recv_until(ws, is_event("phase", state="countdown"))
        assert 0 < countdown["countdown_ms"] <= 300
        await recv_until(ws, is_event("phase", state="running"))
        end = await recv_until(ws, is_type("match_end"), timeout=5.0)
        assert end["reason"] == "time"
        assert 950 <= end["duration_ms"] <= 1100
        assert sorted(entry["name"] for entry in end["ranking"]) == names
        assert all(entry["rank"] == 1 for entry in end["ranking"])  # nobody scored: all tied
        for player, _ in players:
            assert await closed_with(player) == 1000
    finally:
        await app.__aexit__(None, None, None)


async def test_a_countdown_stops_when_players_leave_below_the_minimum() -> None:
    app = await start_app(countdown_s=30.0)
    try:
        players = [await join_game(app, "life-2") for _ in range(3)]
        ws = players[0][0]
        await recv_until(ws, is_event("phase", state="countdown"))
        await players[2][0].send('{"type":"leave"}')
        assert await closed_with(players[2][0]) == 1000
        await recv_until(ws, is_event("phase", state="waiting"))
        for player, _ in players[:2]:
            await player.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_the_last_player_left_in_a_match_wins() -> None:
    app = await start_app(countdown_s=0.0)
    try:
        players = [await join_game(app, "life-3", token=new_token(n)) for n in ("ann", "bob", "cyd")]
        survivor = players[1][0]
        await recv_until(survivor, is_event("phase", state="running"))
        await players[0][0].close()
        await players[2][0].close()
        end = await recv_until(survivor, is_type("match_end"))
        assert end["reason"] == "last_player"
        assert end["ranking"][0]["name"] == "bob" and end["ranking"][0]["rank"] == 1
        assert len(end["ranking"]) == 3
    finally:
        await app.__aexit__(None, None, None)


async def test_chat_and_leave_reach_everyone_in_the_room() -> None:
    app = await start_app()
    try:
        a, wa = await join_game(app, "social")
        b, wb = await join_game(app, "social")
        await a.send('{"type":"chat","text":"gl hf"}')
        for ws in (a, b):
            message = await recv_until(ws, is_event("chat"))
            assert (message["p"], message["text"]) == (wa["you"], "gl hf")
        await a.send('{"type":"leave"}')
        assert await closed_with(a) == 1000
        assert (await recv_until(b, is_event("leave")))["p"] == wa["you"]
        state = await recv_until(b, is_type("state"))
        assert [p["p"] for p in state["players"]] == [wb["you"]]
        await b.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_a_player_who_drops_out_of_a_running_match_can_rejoin_their_seat() -> None:
    app = await start_app(countdown_s=0.0)
    try:
        token = new_token("phoenix")
        players = [await join_game(app, "rejoin", token=token)]
        players += [await join_game(app, "rejoin") for _ in range(3)]
        first_ws, first_welcome = players[0]
        await recv_until(first_ws, is_event("phase", state="running"))
        await first_ws.close()
        await recv_until(players[1][0], is_event("leave", p=first_welcome["you"]))
        again, welcome = await join_game(app, "rejoin", token=token)
        assert welcome["type"] == "welcome" and welcome["you"] == first_welcome["you"]
        assert welcome["state"] == "running"
        for ws, _ in [(again, welcome), *players[1:]]:
            await ws.close()
    finally:
        await app.__aexit__(None, None, None)


class ExplodingGame(ArenaGame):
    """An arena whose simulation fails after a few ticks, standing in for a game with a bug."""

    def __init__(self, rng: random.Random, after: int) -> None:
        super().__init__(rng)
        self._left = after

    def step(self, dt: float) -> None:
        self._left -= 1
        if self._left <= 0:
            raise RuntimeError("boom: a bug in the game")
        super().step(dt)


async def test_an_exception_in_one_rooms_game_closes_that_room_only() -> None:
    app = await start_app({"explode": variant("explode", lambda ctx: ExplodingGame(ctx.rng, after=30))})
    try:
        healthy, _ = await join_game(app, "healthy")
        doomed, _ = await join_game(app, "doomed", mode="explode")
        error = await recv_until(doomed, is_type("error"))
        assert error["code"] == "room_crashed"
        assert await closed_with(doomed) == 1011
        await collect_states(healthy, 0.5)  # read what piled up meanwhile, then measure
        states = await collect_states(healthy, 2.0)
        (t0, first, _), (t1, last, _) = states[0], states[-1]
        assert 66.67 * 0.95 <= (last - first) / (t1 - t0) <= 66.67 * 1.05
        assert app.node is not None
        assert "doomed" not in app.node.rooms and "healthy" in app.node.rooms
        # The crashed room id can be used again afterwards.
        again, welcome = await join_game(app, "doomed")
        assert welcome["type"] == "welcome"
        await again.close()
        await healthy.close()
    finally:
        await app.__aexit__(None, None, None)



async def test_a_client_that_stops_reading_is_skipped_then_dropped_and_never_stalls_the_room() -> None:
    app = await start_app(slow_client_bytes=1024, slow_client_timeout_s=0.5, send_buffer_bytes=4096)
    try:
        reader, _ = await join_game(app, "slow")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.connect(("127.0.0.1", app.port))
        sleeper, _ = await join_game(app, "slow", sock=sock, max_queue=1)
        # The sleeper's client stops reading: its socket and then the server's buffers fill up.
        sleeper.transport.pause_reading()
        assert app.node is not None
        await wait_for(lambda: app.node is not None and app.node.rooms["slow"].stats.skipped_sends > 0,
                       timeout=30.0)
        await recv_until(reader, is_event("leave"), timeout=30.0)
        # The room went on at full rate for the player who reads.
        await collect_states(reader, 0.5)
        states = await collect_states(reader, 2.0)
        (t0, first, _), (t1, last, _) = states[0], states[-1]
        assert 66.67 * 0.95 <= (last - first) / (t1 - t0) <= 66.67 * 1.05
        assert app.node.rooms["slow"].player_count == 1
        await reader.close()
        sleeper.transport.abort()
    finally:
        await app.__aexit__(None, None, None)


class FailingJoinGame(ArenaGame):
    def add_player(self, pid: int) -> None:
        if pid == 2:
            raise RuntimeError("boom in add_player")
        super().add_player(pid)


class FailingWelcomeGame(ArenaGame):
    def welcome(self, pid: int) -> dict[str, Any]:
        if pid == 2:
            raise RuntimeError("boom in welcome")
        return super().welcome(pid)


class FailingLeaveGame(ArenaGame):
    def remove_player(self, pid: int) -> None:
        raise RuntimeError("boom in remove_player")


async def test_a_game_failing_outside_the_tick_closes_its_room_and_leaks_nothing() -> None:
    app = await start_app({"badjoin": variant("badjoin", lambda ctx: FailingJoinGame(ctx.rng)),
                           "badleave": variant("badleave", lambda ctx: FailingLeaveGame(ctx.rng)),
                           "badwelcome": variant("badwelcome", lambda ctx: FailingWelcomeGame(ctx.rng))})
    assert app.node is not None
    node = app.node
    try:
        first, _ = await join_game(app, "bad-join", mode="badjoin")
        second, answer = await join_game(app, "bad-join", mode="badjoin")
        assert (answer["type"], answer["code"]) == ("error", "room_crashed")
        assert await closed_with(second) == 1011
        assert (await recv_until(first, is_type("error")))["code"] == "room_crashed"
        assert await closed_with(first) == 1011

        token = new_token("leaver")
        leaver, _ = await join_game(app, "bad-leave", mode="badleave", token=token)
        stayer, _ = await join_game(app, "bad-leave", mode="badleave")
        await leaver.close()
        assert (await recv_until(stayer, is_type("error")))["code"] == "room_crashed"
        assert await closed_with(stayer) == 1011
        await wait_for(lambda: not node.rooms and node.connections == 0)
        # The player whose leave broke the game is not stuck as "already connected".
        again, welcome = await join_game(app, "after", token=token)
        assert welcome["type"] == "welcome"
        await again.close()

        # A game whose welcome fails: the player it failed for is not left seated in a room that closes.
        greeted, _ = await join_game(app, "bad-welcome", mode="badwelcome")
        unlucky_token = new_token("unlucky")
        unlucky, answer = await join_game(app, "bad-welcome", mode="badwelcome", token=unlucky_token)
        assert (answer["type"], answer["code"]) == ("error", "room_crashed")
        assert await closed_with(unlucky) == 1011
        assert (await recv_until(greeted, is_type("error")))["code"] == "room_crashed"
        await wait_for(lambda: not node.rooms and node.connections == 0)
        back, welcome = await join_game(app, "after-welcome", token=unlucky_token)
        assert welcome["type"] == "welcome"
        await back.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_coming_and_going_before_the_match_keeps_one_pid_per_player() -> None:
    app = await start_app(countdown_s=60.0)
    assert app.node is not None
    try:
        anchor, _ = await join_game(app, "churn", max_queue=None)  # it reads nothing until the end
        token = new_token("churner")
        pids = set()
        for _ in range(20):
            ws, welcome = await join_game(app, "churn", token=token)
            pids.add(welcome["you"])
            await ws.send('{"type":"leave"}')
            await closed_with(ws)
        assert pids == {2}
        assert app.node.rooms["churn"].player_count == 1
        await anchor.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_shutting_the_node_down_closes_every_player_with_1001() -> None:
    app = await start_app()
    players = [await join_game(app, f"bye-{i % 2}") for i in range(4)]
    await app.__aexit__(None, None, None)
    for ws, _ in players:
        assert await closed_with(ws) == 1001
