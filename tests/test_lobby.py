"""The lobby end to end on real nodes and a real Redis: `/lobby` to `match_found` to `/game` with a ticket."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from lobby.tickets import Ticket, mint_ticket
from server.app import App
from server.ops.settings import DEV_SECRET
from tests.serverkit import (
    closed_with,
    is_event,
    is_type,
    join_lobby,
    lobby_prefix,
    new_token,
    open_lobby,
    recv_json,
    recv_until,
    start_lobby_app,
    wait_for,
)

Message = dict[str, Any]


@pytest.fixture
async def node(redis_url: str) -> AsyncIterator[App]:
    app = await start_lobby_app(redis_url)
    yield app
    await app.__aexit__(None, None, None)


async def play(token: str, found: Message) -> tuple[ClientConnection, Message]:
    """Follow `match_found` to the game: connect to its url with the token, say hello, get welcome."""
    ws = await connect(found["url"], additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
                       open_timeout=5)
    await ws.send('{"type":"hello","v":1}')
    return ws, await recv_until(ws, lambda m: m["type"] in ("welcome", "error"))


async def play_as_a_browser(token: str, found: Message) -> tuple[ClientConnection, Message]:
    """Follow `match_found` as a browser's WebSocket must: no headers, the token appended to its url."""
    ws = await connect(f"{found['url']}&token={urllib.parse.quote(token)}", compression=None, open_timeout=5)
    await ws.send('{"type":"hello","v":1}')
    return ws, await recv_until(ws, lambda m: m["type"] in ("welcome", "error"))


async def matched(ws: ClientConnection, timeout: float = 5.0) -> Message:
    return await recv_until(ws, is_type("match_found"), timeout)


async def refused(url: str, token: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        await connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5)
    response = info.value.response
    return response.status_code, orjson.loads(response.body)["error"]


async def http_get(app: App, path: str) -> tuple[int, Any]:
    """GET a node's HTTP endpoint from a thread: the node runs on this test's event loop."""
    return await asyncio.to_thread(_http_get, app, path)


def _http_get(app: App, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.port}{path}", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


async def test_three_players_count_down_then_get_match_found_and_play_on_the_hosting_node(node: App) -> None:
    tokens = [new_token(f"p{i}") for i in range(3)]
    # Joins sent on separate connections have no order until one is answered, so each player joins once
    # the one before has its status.
    lobbies: list[ClientConnection] = []
    seen = []
    for token in tokens:
        lobbies.append(await join_lobby(node, token))
        first_status = await recv_until(lobbies[-1], lambda m: m["type"] == "lobby")
        if len(lobbies) == 1:
            seen.append(first_status)
    # The first player sees the others arrive, in join order, then the countdown start.
    while not seen or not (seen[-1]["type"] == "lobby" and seen[-1]["status"] == "countdown"):
        seen.append(await recv_json(lobbies[0]))
    first = next(m for m in seen if m["type"] == "lobby")
    assert (first["min"], first["max"], first["players"][0]["name"]) == (3, 5, "p0")
    joins = [m["name"] for m in seen if m["type"] == "event" and m["kind"] == "join"]
    assert joins == ["p0", "p1", "p2"][len(first["players"]):]  # everyone not in the first status, in order
    status = seen[-1]
    assert [p["name"] for p in status["players"]] == ["p0", "p1", "p2"] and 0 < status["countdown_ms"] <= 1000
    founds = [await matched(ws) for ws in lobbies]
    assert len({found["room"] for found in founds}) == 1
    for ws in lobbies:
        assert await closed_with(ws) == 1000
    games = []
    for token, found in zip(tokens, founds, strict=True):
        assert found["url"].startswith(f"{node.url}/game?room={found['room']}&ticket=")
        game, welcome = await play(token, found)
        assert welcome["type"] == "welcome" and welcome["room"] == found["room"]
        games.append(game)
    # The match starts as soon as every matched player is in.
    assert await recv_until(games[0], is_event("phase", state="running"))
    for game in games:
        await game.close()


async def test_the_fifth_player_starts_the_match_at_once(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, countdown_s=60.0)
    try:
        started = time.monotonic()
        lobbies = [await join_lobby(app) for _ in range(5)]
        founds = [await matched(ws, timeout=5) for ws in lobbies]
        assert time.monotonic() - started < 10 and len({found["room"] for found in founds}) == 1
        # The next player opens a new room rather than waiting for the running one.
        sixth = await join_lobby(app)
        status = await recv_until(sixth, is_type("lobby"))
        assert status["room"] != founds[0]["room"] and len(status["players"]) == 1
        await sixth.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_the_join_that_fills_a_room_gets_match_found_without_a_lobby_status(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, countdown_s=60.0)
    try:
        lobbies = []
        for _ in range(4):  # one at a time, so that the fifth join is the one that fills the room
            lobbies.append(await join_lobby(app))
            assert (await recv_until(lobbies[-1], is_type("lobby")))["status"] in ("waiting", "countdown")
        token = new_token("fifth")
        fifth = await join_lobby(app, token)
        first = await recv_json(fifth)  # docs/protocol.md: a join that does not wait gets match_found only
        assert first["type"] == "match_found", first
        assert [p["name"] for p in first["players"]][-1] == "fifth" and len(first["players"]) == 5
        assert await closed_with(fifth) == 1000
        game, welcome = await play_as_a_browser(token, first)
        assert welcome["type"] == "welcome" and welcome["room"] == first["room"]
        await game.close()
        for ws in lobbies:
            await ws.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_a_countdown_stops_when_a_player_leaves_and_the_others_are_told(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, countdown_s=60.0)
    try:
        lobbies = [await join_lobby(app) for _ in range(3)]
        await recv_until(lobbies[0], lambda m: m["type"] == "lobby" and m["status"] == "countdown")
        leaver = await recv_until(lobbies[2], is_type("lobby"))
        await lobbies[2].send('{"type":"leave"}')
        assert await closed_with(lobbies[2]) == 1000
        left = await recv_until(lobbies[0], is_event("leave"))
        assert left["id"] == leaver["players"][-1]["id"]
        status = await recv_until(lobbies[0], lambda m: m["type"] == "lobby" and m["status"] == "waiting")
        assert len(status["players"]) == 2 and status["countdown_ms"] is None
    finally:
        await app.__aexit__(None, None, None)


async def test_countdown_ticks_arrive_about_once_a_second(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, countdown_s=2.5)
    try:
        lobbies = [await join_lobby(app) for _ in range(3)]
        ticks = []
        while True:
            message = await recv_json(lobbies[0], 5)
            if message["type"] == "countdown":
                ticks.append(message["ms"])
            if message["type"] == "match_found":
                break
        assert len(ticks) >= 2 and ticks == sorted(ticks, reverse=True) and ticks[-1] <= 1500
    finally:
        await app.__aexit__(None, None, None)


async def test_a_second_connection_of_a_waiting_player_is_refused(node: App) -> None:
    token = new_token()
    first = await join_lobby(node, token)
    await recv_until(first, is_type("lobby"))
    second = await join_lobby(node, token)
    error = await recv_until(second, is_type("error"))
    assert error["code"] == "already_connected"
    assert await closed_with(second) == 1008
    await first.send('{"type":"ping","t":1}')
    assert (await recv_until(first, is_type("pong")))["t"] == 1


async def test_a_waiting_player_who_drops_and_joins_again_gets_the_same_room(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, lobby_grace_s=5.0)
    try:
        other = await join_lobby(app)
        room = (await recv_until(other, is_type("lobby")))["room"]
        token = new_token("dropper")
        first = await join_lobby(app, token)
        assert (await recv_until(first, is_type("lobby")))["room"] == room
        await first.close()  # no leave: a drop
        again = await join_lobby(app, token)
        status = await recv_until(again, is_type("lobby"))
        assert status["room"] == room and [p["name"] for p in status["players"]] == [
            status["players"][0]["name"], "dropper"]
    finally:
        await app.__aexit__(None, None, None)


async def test_a_dropped_waiting_player_lets_the_seat_go_after_the_grace(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, lobby_grace_s=0.3)
    try:
        stayer = await join_lobby(app)
        await recv_until(stayer, is_type("lobby"))
        dropper = await join_lobby(app)
        await recv_until(stayer, is_event("join"))
        await dropper.close()
        await recv_until(stayer, is_event("leave"), timeout=5)
        status = await recv_until(stayer, is_type("lobby"))
        assert len(status["players"]) == 1
    finally:
        await app.__aexit__(None, None, None)


async def test_a_player_who_dropped_out_of_a_match_rejoins_it_through_the_lobby(node: App) -> None:
    tokens = [new_token(f"p{i}") for i in range(3)]
    lobbies = [await join_lobby(node, token) for token in tokens]
    founds = [await matched(ws) for ws in lobbies]
    games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
    await recv_until(games[0], is_event("phase", state="running"))
    await games[1].close()  # dropped, not left
    await recv_until(games[0], is_event("leave"))
    back = await join_lobby(node, tokens[1])
    found = await matched(back)
    assert found["room"] == founds[1]["room"]
    game, welcome = await play(tokens[1], found)
    assert welcome["type"] == "welcome" and welcome["state"] == "running"
    rejoined = await recv_until(games[0], is_event("join"))
    assert rejoined["p"] == welcome["you"]
    for ws in (game, games[0], games[2]):
        await ws.close()


async def test_a_hello_that_crosses_the_end_of_the_match_gets_its_result_and_a_normal_close(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, countdown_s=0.2, match_time_s=1.0, end_linger_s=5.0)
    try:
        tokens = [new_token(f"p{i}") for i in range(3)]
        lobbies = [await join_lobby(app, token) for token in tokens]
        founds = [await matched(ws) for ws in lobbies]
        games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
        await games[1].close()  # dropped: the seat stays theirs through the reconnect grace
        end = await recv_until(games[0], is_type("match_end"), timeout=5)
        # Back with the ticket of that match, as when the lobby sent them there before it heard of the end.
        late = await connect(founds[1]["url"], additional_headers={"Authorization": f"Bearer {tokens[1]}"},
                             compression=None, open_timeout=5)
        await late.send('{"type":"hello","v":1}')
        answer = await recv_json(late)
        assert answer["type"] == "match_end" and answer["match"] == end["match"]
        assert answer["ranking"] == end["ranking"]
        assert await closed_with(late) == 1000
        for ws in (games[0], games[2]):
            await ws.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_bad_lobby_input_gets_documented_errors(node: App) -> None:
    ws = await open_lobby(node)
    await ws.send('{"type":"join","v":1,"mode":"chess"}')
    assert (await recv_until(ws, is_type("error")))["code"] == "unknown_mode"
    await ws.send('{"type":"jump"}')
    assert (await recv_until(ws, is_type("error")))["code"] == "unknown_type"
    await ws.send('{"type":"join"}')
    assert (await recv_until(ws, is_type("error")))["code"] == "bad_field"
    await ws.send('{"type":"join","v":1}')
    await recv_until(ws, is_type("lobby"))
    await ws.send('{"type":"join","v":1}')
    assert (await recv_until(ws, is_type("error")))["code"] == "already_joined"
    other = await open_lobby(node)
    await other.send('{"type":"join","v":2}')
    assert (await recv_until(other, is_type("error")))["code"] == "unsupported_version"
    assert await closed_with(other) == 1008


async def test_game_connections_need_a_valid_ticket_for_that_room_and_player(node: App) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    tokens = [new_token(player_id=player_id) for player_id in ids]
    lobbies = [await join_lobby(node, token) for token in tokens]
    founds = [await matched(ws) for ws in lobbies]
    room = founds[0]["room"]
    base = f"{node.url}/game?room={room}"
    assert await refused(base, tokens[0]) == (401, "ticket_missing")
    assert await refused(f"{base}&ticket=not-a-ticket", tokens[0]) == (401, "ticket_invalid")
    # Another player's ticket, a forged one, an expired one, one for another room.
    assert await refused(f"{base}&ticket={founds[1]['ticket']}", tokens[0]) == (401, "ticket_invalid")
    player_id, owner = ids[0], tokens[0]
    forged = mint_ticket("another-secret-that-is-long-enough-for-hs256", Ticket(player_id, room, "test-node"))
    assert await refused(f"{base}&ticket={forged}", owner) == (401, "ticket_invalid")
    expired = mint_ticket(DEV_SECRET, Ticket(player_id, room, "test-node"), ttl_s=10, now=time.time() - 60)
    assert await refused(f"{base}&ticket={expired}", owner) == (401, "ticket_expired")
    assert await refused(f"{node.url}/game?room=elsewhere&ticket={founds[0]['ticket']}", tokens[0]) == (
        403, "ticket_wrong_room")
    # A valid ticket for a room that is gone.
    gone = mint_ticket(DEV_SECRET, Ticket(player_id, "no-such-room", "test-node"))
    assert await refused(f"{node.url}/game?room=no-such-room&ticket={gone}", owner) == (404, "room_not_found")


async def test_a_player_who_left_the_match_cannot_come_back_with_the_old_ticket(node: App) -> None:
    tokens = [new_token() for _ in range(3)]
    lobbies = [await join_lobby(node, token) for token in tokens]
    founds = [await matched(ws) for ws in lobbies]
    games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
    await games[0].send('{"type":"leave"}')
    assert await closed_with(games[0]) == 1000
    room = founds[0]["room"]
    for _ in range(100):
        _, body = await http_get(node, f"/lobby/rooms/{room}")
        if len(body["players"]) == 2:
            break
        await asyncio.sleep(0.05)
    game_ws = None
    with pytest.raises(InvalidStatus) as info:
        game_ws = await connect(founds[0]["url"], additional_headers={"Authorization": f"Bearer {tokens[0]}"})
    assert game_ws is None and info.value.response.status_code == 403
    for game in games[1:]:
        await game.close()


async def test_lobby_http_lists_rooms_with_counts_and_countdowns(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, countdown_s=60.0)
    try:
        lobbies = [await join_lobby(app) for _ in range(3)]
        status = await recv_until(lobbies[0], lambda m: m["type"] == "lobby" and m["status"] == "countdown")
        room = status["room"]
        code, body = await http_get(app, "/lobby/rooms")
        assert code == 200 and body["mode"] == "arena"
        (entry,) = body["rooms"]
        assert (entry["id"], entry["state"], entry["players"], entry["node"]) == (room, "countdown", 3, "test-node")
        assert 0 < entry["countdown_ms"] <= 60_000
        code, detail = await http_get(app, f"/lobby/rooms/{room}")
        assert code == 200 and [p["id"] for p in detail["players"]] == [p["id"] for p in status["players"]]
        assert detail["url"] == app.url
        assert (await http_get(app, "/lobby/rooms/nope"))[0] == 404
        code, body = await http_get(app, "/lobby/rooms?mode=chess")
        assert (code, body["error"]) == (400, "unknown_mode")
    finally:
        await app.__aexit__(None, None, None)


async def test_a_player_matched_through_one_node_plays_on_the_node_that_hosts_the_room(redis_url: str) -> None:
    prefix = lobby_prefix()
    # New rooms go to the least-loaded live node, ties broken by id: "a-host" takes them.
    host = await start_lobby_app(redis_url, lobby_prefix=prefix, node_id="a-host")
    front = await start_lobby_app(redis_url, lobby_prefix=prefix, node_id="z-front")
    try:
        await asyncio.sleep(0.5)  # both heart-beat and see each other
        tokens = [new_token() for _ in range(3)]
        lobbies = [await join_lobby(front, token) for token in tokens]
        founds = [await matched(ws) for ws in lobbies]
        assert {found["node"] for found in founds} == {"a-host"}
        assert founds[0]["url"].startswith(host.url)
        # The front node refuses the ticket: the room is not its own.
        wrong = founds[0]["url"].replace(host.url, front.url)
        assert (await refused(wrong, tokens[0]))[1] == "wrong_node"
        game, welcome = await play(tokens[0], founds[0])
        assert welcome["type"] == "welcome" and host.node is not None and founds[0]["room"] in host.node.rooms
        await game.close()
    finally:
        await front.__aexit__(None, None, None)
        await host.__aexit__(None, None, None)


async def test_new_rooms_go_to_another_node_while_the_preferred_one_is_full_and_come_back_once_it_is_not(
        redis_url: str) -> None:
    prefix = lobby_prefix()
    # "a-host" would take every new room (least loaded, ties broken by id) but for its load.
    host = await start_lobby_app(redis_url, lobby_prefix=prefix, node_id="a-host")
    other = await start_lobby_app(redis_url, lobby_prefix=prefix, node_id="z-other")
    try:
        assert host.node is not None and host.node.on_load_change is not None and other.hub is not None
        await asyncio.sleep(0.5)  # both heart-beat and see each other
        host.node.load.full = True
        host.node.on_load_change()
        await wait_for(lambda: [(info.node_id, info.accepting) for info in other.hub.upkeep.live]
                       == [("a-host", False), ("z-other", True)])
        # Players who come through the full node's own lobby too: their room is on the other node.
        tokens = [new_token() for _ in range(3)]
        lobbies = [await join_lobby(app, token) for app, token in zip((host, other, host), tokens, strict=True)]
        founds = [await matched(ws) for ws in lobbies]
        assert {found["node"] for found in founds} == {"z-other"}
        game, welcome = await play(tokens[0], founds[0])
        assert welcome["type"] == "welcome" and other.node is not None and founds[0]["room"] in other.node.rooms
        assert not host.node.rooms
        await game.close()  # now: a client that reads nothing stops reading at its queue's end, close frame too
        # Not full any more: the next room is the preferred node's again.
        host.node.load.full = False
        host.node.on_load_change()
        await wait_for(lambda: all(info.accepting for info in other.hub.upkeep.live))
        later = [new_token() for _ in range(3)]
        more = [await join_lobby(other, token) for token in later]
        assert {(await matched(ws))["node"] for ws in more} == {"a-host"}
        for ws in (*lobbies, *more):
            await ws.close()
    finally:
        await other.__aexit__(None, None, None)
        await host.__aexit__(None, None, None)


async def test_with_backfill_a_running_match_that_loses_a_player_takes_the_longest_waiting_one(
        redis_url: str) -> None:
    app = await start_lobby_app(redis_url, backfill=True, countdown_s=60.0)
    try:
        tokens = [new_token() for _ in range(5)]
        lobbies = [await join_lobby(app, token) for token in tokens]
        founds = [await matched(ws) for ws in lobbies]
        games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
        await recv_until(games[0], is_event("phase", state="running"))
        waiting_token = new_token("late")
        waiting = await join_lobby(app, waiting_token)
        assert (await recv_until(waiting, is_type("lobby")))["room"] != founds[0]["room"]
        await games[4].send('{"type":"leave"}')
        found = await matched(waiting)
        assert found["room"] == founds[0]["room"]
        game, welcome = await play(waiting_token, found)
        assert welcome["type"] == "welcome" and welcome["state"] == "running"
        for ws in (*games[:4], game):
            await ws.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_too_few_matched_players_in_the_join_window_cancel_the_match(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, join_window_s=0.5)
    try:
        tokens = [new_token() for _ in range(3)]
        lobbies = [await join_lobby(app, token) for token in tokens]
        founds = [await matched(ws) for ws in lobbies]
        game, welcome = await play(tokens[0], founds[0])  # the other two never come
        assert welcome["state"] == "waiting"
        error = await recv_until(game, is_type("error"), timeout=5)
        assert error["code"] == "match_cancelled"
        assert await closed_with(game) == 1000
        # The room is over in Redis too: the players are free to join again.
        for _ in range(100):
            if (await http_get(app, f"/lobby/rooms/{founds[0]['room']}"))[0] == 404:
                break
            await asyncio.sleep(0.05)
        again = await join_lobby(app, tokens[0])
        assert (await recv_until(again, is_type("lobby")))["room"] != founds[0]["room"]
    finally:
        await app.__aexit__(None, None, None)


async def test_a_finished_match_frees_its_players_and_its_keys(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, match_time_s=1.0, end_linger_s=0.1)
    try:
        tokens = [new_token() for _ in range(3)]
        lobbies = [await join_lobby(app, token) for token in tokens]
        founds = [await matched(ws) for ws in lobbies]
        games = [(await play(token, found))[0] for token, found in zip(tokens, founds, strict=True)]
        assert (await recv_until(games[0], is_type("match_end"), timeout=5))["reason"] == "time"
        for game in games:
            assert await closed_with(game) == 1000
        for _ in range(100):
            if (await http_get(app, "/lobby/rooms"))[1]["rooms"] == []:
                break
            await asyncio.sleep(0.05)
        assert (await http_get(app, "/lobby/rooms"))[1]["rooms"] == []
        again = await join_lobby(app, tokens[0])
        assert (await recv_until(again, is_type("lobby")))["status"] == "waiting"
    finally:
        await app.__aexit__(None, None, None)



async def test_a_match_whose_roster_shrank_below_three_in_the_join_window_does_not_start_with_two(
        redis_url: str) -> None:
    app = await start_lobby_app(redis_url, join_window_s=1.0)
    try:
        tokens = [new_token() for _ in range(3)]
        lobbies = [await join_lobby(app, token) for token in tokens]
        founds = [await matched(ws) for ws in lobbies]
        first, _ = await play(tokens[0], founds[0])
        second, _ = await play(tokens[1], founds[1])
        await first.send('{"type":"leave"}')
        assert await closed_with(first) == 1000
        third, welcome = await play(tokens[2], founds[2])
        # Everyone still matched is in, but two are too few: the room waits for its window, then cancels.
        assert welcome["state"] == "waiting"
        error = await recv_until(third, is_type("error"), timeout=5)
        assert error["code"] == "match_cancelled"
        assert await closed_with(second) == 1000
    finally:
        await app.__aexit__(None, None, None)


async def test_a_node_that_shuts_down_hands_its_waiting_rooms_to_a_live_node(redis_url: str) -> None:
    prefix = lobby_prefix()
    host = await start_lobby_app(redis_url, lobby_prefix=prefix, node_id="a-host", countdown_s=0.5)
    front = await start_lobby_app(redis_url, lobby_prefix=prefix, node_id="z-front", countdown_s=0.5)
    try:
        await asyncio.sleep(0.5)  # both heart-beat and see each other
        waiting = [await join_lobby(front) for _ in range(2)]
        status = await recv_until(waiting[0], is_type("lobby"))
        _, room = await http_get(front, f"/lobby/rooms/{status['room']}")
        assert room["node"] == "a-host"
        await host.__aexit__(None, None, None)
        for _ in range(100):
            _, room = await http_get(front, f"/lobby/rooms/{status['room']}")
            if room["node"] == "z-front":
                break
            await asyncio.sleep(0.05)
        assert room["node"] == "z-front" and len(room["players"]) == 2
        third = await join_lobby(front)
        found = await matched(third)
        assert found["room"] == status["room"] and found["url"].startswith(front.url)
        for ws in waiting:
            assert (await matched(ws))["node"] == "z-front"
    finally:
        await front.__aexit__(None, None, None)
        await host.__aexit__(None, None, None)


async def test_a_matched_player_who_blips_before_the_others_arrive_does_not_end_the_match(node: App) -> None:
    tokens = [new_token() for _ in range(3)]
    lobbies = [await join_lobby(node, token) for token in tokens]
    founds = [await matched(ws) for ws in lobbies]
    first, _ = await play(tokens[0], founds[0])
    await first.close()  # alone in the room, and gone for a moment: the room must wait for the others
    again, welcome = await play(tokens[0], founds[0])
    assert welcome["type"] == "welcome"
    others = [(await play(token, found)) for token, found in zip(tokens[1:], founds[1:], strict=True)]
    assert all(w["type"] == "welcome" for _, w in others)
    assert await recv_until(again, is_event("phase", state="running"))
    for ws in (again, *(ws for ws, _ in others)):
        await ws.close()
