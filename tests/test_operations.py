"""What an operator sees of a node: /healthz and /readyz, /metrics in the Prometheus format, the admin view
and its drain call, JSON log lines that name the connection and the player, and the settings' page."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import urllib.error
import urllib.request
import uuid
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from persistence.migrate import migrate_url
from server.app import App
from server.ops import configdoc
from server.ops.logs import CONN, PLAYER, ContextFilter, JsonFormatter
from server.ops.settings import DEV_SECRET, Settings, SettingsError
from tests.serverkit import (
    is_event,
    is_type,
    join_game,
    join_lobby,
    new_token,
    recv_until,
    start_lobby_app,
    wait_for,
)

ADMIN = "admin-" + uuid.uuid4().hex


def http(app: App, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """GET a node's endpoint (blocking: call it through `asyncio.to_thread`): status, content type, body."""
    request = urllib.request.Request(f"http://127.0.0.1:{app.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


async def get(app: App, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    return await asyncio.to_thread(http, app, path, headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def drained(app: App, timeout: float = 15.0) -> None:
    drainer = app.drainer
    assert drainer is not None
    await wait_for(lambda: drainer.state.value == "drained", timeout, interval=0.05)


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
async def node(redis_url: str, fresh_database: str) -> Any:
    await migrate_url(fresh_database)
    app = await start_lobby_app(redis_url, database_url=fresh_database, direct_join=True, min_players=2,
                                max_players=2, persist=True, admin_token=ADMIN, match_time_s=3)
    yield app
    await app.__aexit__(None, None, None)


# -- health ----------------------------------------------------------------------------------------------------

async def test_a_ready_node_says_so_and_names_each_check(node: App) -> None:
    assert (await get(node, "/healthz"))[0] == 200
    status, content_type, body = await get(node, "/readyz")
    ready = orjson.loads(body)
    assert (status, content_type) == (200, "application/json"), ready
    assert ready["ready"] is True
    assert {name: check["ok"] for name, check in ready["checks"].items()} == {
        "redis": True, "postgres": True, "migrations": True, "draining": True}


async def test_a_node_whose_postgres_is_unreachable_is_alive_but_not_ready(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, database_url="postgresql://nobody@127.0.0.1:1/none", persist=True)
    try:
        assert (await get(app, "/healthz"))[0] == 200
        status, _, body = await get(app, "/readyz")
        ready = orjson.loads(body)
        assert status == 503 and ready["ready"] is False
        assert ready["checks"]["postgres"]["ok"] is False and ready["checks"]["redis"]["ok"] is True
        assert "postgres" in ready["checks"]["postgres"]["detail"].lower() or ready["checks"]["postgres"]["detail"]
    finally:
        await app.__aexit__(None, None, None)


# -- metrics ---------------------------------------------------------------------------------------------------

async def test_metrics_count_a_match_its_messages_ticks_and_errors(node: App) -> None:
    ann, _ = await join_game(node, "metered", token=new_token("ann"))
    bob, _ = await join_game(node, "metered", token=new_token("bob"))
    await recv_until(ann, is_event("phase", state="running"))
    await ann.send('{"type":"nonsense"}')
    await recv_until(ann, lambda m: m["type"] == "error" and m["code"] == "unknown_type")
    await recv_until(ann, is_type("match_end"), timeout=10)
    status, content_type, body = await get(node, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    found = samples(body)
    assert found[("tickroom_matches_started_total", ())] == 1
    assert found[("tickroom_errors_total", (("code", "unknown_type"),))] == 1
    assert found[("tickroom_messages_total", (("direction", "in"),))] >= 3  # two hellos and the nonsense
    assert found[("tickroom_messages_total", (("direction", "out"),))] > 100  # states at 66 Hz to two players
    assert found[("tickroom_bytes_total", (("direction", "out"),))] > found[("tickroom_bytes_total",
                                                                              (("direction", "in"),))]
    assert found[("tickroom_tick_duration_seconds_count", ())] > 100
    assert found[("tickroom_tick_lateness_seconds_count", ())] == found[("tickroom_tick_duration_seconds_count", ())]
    assert found[("tickroom_players_connected", ())] == 2
    gc.collect()  # a full collection while the node watches: counted under generation 2
    status, _, body = await get(node, "/metrics")
    after = samples(body)
    full = ("tickroom_gc_pause_seconds_count", (("generation", "2"),))
    assert after[full] >= found.get(full, 0) + 1
    assert after[("tickroom_gc_pause_seconds_sum", (("generation", "2"),))] > 0
    assert found[("tickroom_rooms", (("state", "finished"),))] == 1
    assert ("tickroom_lobby_queue_length", (("mode", "arena"),)) in found
    assert found[("tickroom_write_queue_depth", ())] >= 0
    for name in ("tickroom_lobby_wait_seconds_count", "tickroom_snapshot_round_seconds_count",
                 "tickroom_write_queue_retries_total", "tickroom_reconnects_total", "tickroom_draining"):
        assert (name, ()) in found, name
    assert ("tickroom_backend_errors_total", (("backend", "redis"),)) in found
    await ann.close()
    await bob.close()


async def test_refused_handshakes_are_counted_by_their_code(node: App) -> None:
    assert (await get(node, "/game?room=x", bearer("not-a-token")))[0] == 401
    assert (await get(node, "/nowhere"))[0] == 404
    found = samples((await get(node, "/metrics"))[2])
    assert found[("tickroom_errors_total", (("code", "token_invalid"),))] == 1
    assert found[("tickroom_errors_total", (("code", "not_found"),))] == 1


# -- the admin view and draining -----------------------------------------------------------------------------

async def test_the_admin_view_wants_the_admin_token(node: App) -> None:
    status, _, body = await get(node, "/admin")
    assert (status, orjson.loads(body)["error"]) == (401, "admin_token_invalid")
    assert (await get(node, "/admin", bearer("guess")))[0] == 401
    assert (await get(node, "/admin/drain?node=" + node.settings.node_id, bearer("guess")))[0] == 401


async def test_without_an_admin_token_set_the_admin_view_is_off(redis_url: str) -> None:
    app = await start_lobby_app(redis_url)
    try:
        status, _, body = await get(app, "/admin", bearer(""))
        assert (status, orjson.loads(body)["error"]) == (404, "not_found")
    finally:
        await app.__aexit__(None, None, None)


async def test_the_admin_view_lists_nodes_rooms_and_players_as_json_and_as_a_page(node: App) -> None:
    ann_id = str(uuid.uuid4())
    ann, _ = await join_game(node, "watched", token=new_token("ann", player_id=ann_id))
    assert node.hub is not None
    await asyncio.wait_for(node.hub.upkeep.surveyed.wait(), 5)  # the directory of nodes, as of a heartbeat
    status, _, body = await get(node, "/admin", bearer(ADMIN))
    view = orjson.loads(body)
    assert status == 200
    assert view["node"]["id"] == node.settings.node_id and view["node"]["state"] == "serving"
    assert [entry["id"] for entry in view["nodes"]] == [node.settings.node_id]
    assert view["rooms"]["watched"]["players"] == 1 and "lateness_ms" in view["rooms"]["watched"]
    assert [(p["player"], p["room"], p["connected"]) for p in view["players"]] == [(ann_id, "watched", True)]
    status, content_type, page = await get(node, "/admin", {**bearer(ADMIN), "Accept": "text/html"})
    assert status == 200 and content_type.startswith("text/html")
    assert b"<table>" in page and b"watched" in page and ann_id.encode() in page
    await ann.close()


async def test_a_drain_call_must_name_the_node_and_then_stops_new_rooms_and_readiness(node: App) -> None:
    status, _, body = await get(node, "/admin/drain", bearer(ADMIN))
    assert (status, orjson.loads(body)["error"]) == (400, "bad_request")
    status, _, body = await get(node, f"/admin/drain?node={node.settings.node_id}&deadline_s=-1", bearer(ADMIN))
    assert status == 400
    status, _, body = await get(node, f"/admin/drain?node={node.settings.node_id}&deadline_s=60", bearer(ADMIN))
    assert status == 200 and orjson.loads(body)["state"] in ("draining", "drained")
    ready = orjson.loads((await get(node, "/readyz"))[2])
    assert ready["ready"] is False and ready["checks"]["draining"]["ok"] is False
    _, refused = await join_game(node, "after-drain", token=new_token())
    assert (refused["type"], refused["code"]) == ("error", "server_full")
    status, _, body = await get(node, "/lobby", bearer(new_token()))
    assert (status, orjson.loads(body)["error"]) == (503, "node_draining")  # the balancer tries another node
    found = samples((await get(node, "/metrics"))[2])
    assert found[("tickroom_draining", ())] == 1

    async def drained() -> bool:
        view = orjson.loads((await get(node, "/admin", bearer(ADMIN)))[2])
        return bool(view["node"]["state"] == "drained")

    for _ in range(100):  # nothing to wait for: no room
        if await drained():
            break
        await asyncio.sleep(0.05)
    assert await drained()


async def test_a_drain_lets_a_running_match_finish_then_reports_drained(node: App) -> None:
    ann, _ = await join_game(node, "finishing", token=new_token("ann"))
    bob, _ = await join_game(node, "finishing", token=new_token("bob"))
    await recv_until(ann, is_event("phase", state="running"))
    assert (await get(node, f"/admin/drain?node={node.settings.node_id}&deadline_s=60", bearer(ADMIN)))[0] == 200
    end = await recv_until(ann, is_type("match_end"), timeout=10)  # the match plays to its time limit
    assert end["reason"] == "time"
    await recv_until(ann, is_event("result_saved"), timeout=10)
    await drained(node)
    await ann.close()
    await bob.close()


async def test_a_draining_node_still_hosts_the_lobby_room_that_was_forming_for_it(
        redis_url: str, fresh_database: str) -> None:
    """A room the lobby placed on the node before the drain fills up through another node's lobby and starts:
    its players are seated here, play the match out, and only then is the node drained."""
    await migrate_url(fresh_database)
    options: dict[str, Any] = {"database_url": fresh_database, "persist": True, "min_players": 2,
                               "max_players": 2, "match_time_s": 2, "admin_token": ADMIN,
                               "lobby_prefix": f"t{uuid.uuid4().hex[:10]}"}
    draining = await start_lobby_app(redis_url, node_id="node-draining", **options)
    other = await start_lobby_app(redis_url, node_id="node-other", **options)
    try:
        first_token, second_token = new_token("ann"), new_token("bob")
        first = await join_lobby(draining, first_token)
        waiting = await recv_until(first, lambda m: m["type"] == "lobby" and m["status"] == "waiting")
        assert draining.hub is not None
        record = await draining.hub.room("arena", waiting["room"])
        assert record is not None and record.node == "node-draining"
        path = "/admin/drain?node=node-draining&deadline_s=60"
        assert (await get(draining, path, bearer(ADMIN)))[0] == 200
        second = await join_lobby(other, second_token)  # the room on the draining node is the fullest open one
        founds = [await recv_until(ws, is_type("match_found"), timeout=10) for ws in (first, second)]
        assert {found["node"] for found in founds} == {"node-draining"}
        games = []
        for token, found in zip((first_token, second_token), founds, strict=True):
            game = await connect(found["url"], additional_headers=bearer(token), open_timeout=5)
            await game.send('{"type":"hello","v":1}')
            welcome = await recv_until(game, lambda m: m["type"] in ("welcome", "error"))
            assert welcome["type"] == "welcome", welcome
            games.append(game)
        end = await recv_until(games[0], is_type("match_end"), timeout=10)
        assert end["reason"] == "time"
        await drained(draining)
        for game in games:
            await game.close()
    finally:
        await other.__aexit__(None, None, None)
        await draining.__aexit__(None, None, None)


# -- logs ------------------------------------------------------------------------------------------------------

def test_a_json_log_line_names_its_connection_player_and_extra_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"tickroom.test.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    conn_token, player_token = CONN.set("c-1"), PLAYER.set("p-1")
    try:
        logger.warning("room %s closed", "r1", extra={"match": "m-1"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        CONN.reset(conn_token)
        PLAYER.reset(player_token)
    logger.info("outside")  # below the logger's level: not written
    logger.error("no context")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0] | {"ts": ""} == {"ts": "", "level": "WARNING", "logger": logger.name, "msg": "room r1 closed",
                                     "conn": "c-1", "player": "p-1", "match": "m-1"}
    assert lines[1]["msg"] == "failed" and "ValueError: boom" in lines[1]["exc"]
    assert "conn" not in lines[2] and "player" not in lines[2]


# -- settings --------------------------------------------------------------------------------------------------

def test_production_refuses_the_development_secret_and_short_ones() -> None:
    with pytest.raises(SettingsError, match="TICKROOM_JWT_SECRET"):
        Settings.load(environ={"TICKROOM_ENV": "production"})
    with pytest.raises(SettingsError, match="32 characters"):
        Settings.load(environ={"TICKROOM_ENV": "production", "TICKROOM_JWT_SECRET": "short"})
    settings = Settings.load(environ={"TICKROOM_ENV": "production", "TICKROOM_JWT_SECRET": "x" * 32})
    assert settings.jwt_secret != DEV_SECRET
    with pytest.raises(SettingsError, match="TICKROOM_ENV"):
        Settings.load(environ={"TICKROOM_ENV": "staging"})
    with pytest.raises(SettingsError, match="TICKROOM_LOG_FORMAT"):
        Settings.load(environ={"TICKROOM_LOG_FORMAT": "xml"})


def test_the_configuration_page_is_generated_from_the_settings() -> None:
    assert configdoc.PAGE.read_text() == configdoc.markdown(), "run: python -m server.ops.configdoc"
    for name in ("TICKROOM_ENV", "TICKROOM_ADMIN_TOKEN", "TICKROOM_DRAIN_DEADLINE_S", "TICKROOM_LOG_FORMAT"):
        assert f"`{name}`" in configdoc.PAGE.read_text()


def test_serve_help_lists_every_setting_with_its_variable_and_default() -> None:
    import dataclasses
    import subprocess

    from tests.clusterkit import TICKROOM

    shown = subprocess.run([TICKROOM, "serve", "--help"], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    flat = " ".join(shown.split())
    for field in dataclasses.fields(Settings):
        assert f"--{field.name.replace('_', '-')}" in flat, field.name
        assert f"env {field.metadata['env']};" in flat, field.name
    assert "default 'development'" in flat and "(development secret)" in flat
