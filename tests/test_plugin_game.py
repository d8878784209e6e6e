"""A game added without touching Tickroom: tests/example_game is a package of its own (coinflip), installed with pip
into a directory of its own; a node finds it through its `tickroom.games` entry point, lists it at GET /modes,
matches it in the lobby, hosts it, records it in Postgres, and `tickroom serve` serves it when TICKROOM_GAMES asks.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from game.api import GameContext, message_type
from persistence.migrate import migrate_url
from server.ops.embedded import free_port
from server.rooms.catalog import installed_games
from tests.clusterkit import TICKROOM, child_environment, http_json
from tests.serverkit import (
    is_event,
    is_type,
    join_lobby,
    lobby_prefix,
    new_token,
    recv_json,
    recv_until,
    start_lobby_app,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "tests" / "example_game"
Message = dict[str, Any]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed the way an operator would, with pip, into a directory of its own. pip builds from
    a copy: a build in place would leave `build/` and `*.egg-info` in the repository (and race other workers)."""
    work = tmp_path_factory.mktemp("coinflip")
    source, target = work / "source", work / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "--target", str(target), str(source)],
                         capture_output=True, text=True, timeout=180)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return target


@pytest.fixture
def coinflip_installed(installed: Path) -> Iterator[Path]:
    """The installed package visible to this process, as if installed in its environment; undone afterwards, so
    that the other tests of this worker see only the games Tickroom ships."""
    sys.path.insert(0, str(installed))
    importlib.invalidate_caches()  # entry points are read from the *.dist-info directories on sys.path
    try:
        yield installed
    finally:
        sys.path.remove(str(installed))
        sys.modules.pop("tickroom_coinflip", None)
        importlib.invalidate_caches()


def coinflip_module() -> ModuleType:
    return importlib.import_module("tickroom_coinflip")


# -- the package -----------------------------------------------------------------------------------


def test_the_example_game_lives_only_in_its_own_package(installed: Path) -> None:
    """Nothing outside tests/ names coinflip: no game/ module, no server hook, no entry point in Tickroom's own
    pyproject.toml. Documents (*.md) may walk through it; code and configuration may not."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    naming = []
    for name in files:
        path = REPO / name
        if not name or name.startswith("tests/") or path.suffix == ".md" or not path.is_file():
            continue
        if b"coinflip" in path.read_bytes().lower():
            naming.append(name)
    assert naming == []
    assert "coinflip" not in installed_games()  # without the package on the path, nobody knows of it
    entry_points = next(installed.glob("tickroom_example_coinflip-0.1.0.dist-info")) / "entry_points.txt"
    assert entry_points.read_text().split() == ["[tickroom.games]", "coinflip", "=", "tickroom_coinflip:DEFINITION"]


def test_once_installed_the_game_is_found_through_its_entry_point(coinflip_installed: Path) -> None:
    games = installed_games()
    module = coinflip_module()
    assert games["coinflip"] is module.DEFINITION
    assert Path(str(module.__file__)).parent == coinflip_installed  # pip's copy, not the source in tests/
    assert {"arena", "dice", "coinflip"} <= set(games)


def test_a_match_restored_from_a_snapshot_midway_plays_on_identically(coinflip_installed: Path) -> None:
    coinflip = coinflip_module()
    calls = [("heads", "tails"), ("tails", "tails"), ("heads", "heads"), ("tails", "heads")] * 10

    def game_after(rounds: list[tuple[str, str]], game: Any, at_ms: int) -> list[Any]:
        seen = []
        for n, (first, second) in enumerate(rounds):
            if game.end_reason is not None:
                break
            game.handle(1, coinflip.Call(side=first), at_ms + n)
            game.handle(2, coinflip.Call(side=second), at_ms + n)
            seen.append((game.state(), [event.body for event in game.drain_events()]))
        return [*seen, game.end_reason, game.standings()]

    def new_game() -> Any:
        game = coinflip.make(GameContext(rng=random.Random(7), time_limit_ms=0))
        game.join(1, "ann", 0)
        game.join(2, "bob", 0)
        game.start(10)
        return game

    whole = new_game()
    first_half = game_after(calls[:2], whole, 100)
    snapshot = orjson.loads(orjson.dumps(whole.snapshot()))
    expected = game_after(calls[2:], whole, 200)
    restored = coinflip.make(GameContext(rng=random.Random(99), time_limit_ms=0))  # the snapshot carries the rng
    restored.restore(snapshot)
    restored.join(1, "ann", 150)
    restored.join(2, "bob", 150)
    restored.state()
    assert first_half and game_after(calls[2:], restored, 200) == expected
    assert expected[-2] == "won"


def test_the_readme_documents_every_message_field_refusal_and_option(coinflip_installed: Path) -> None:
    coinflip = coinflip_module()
    text = (EXAMPLE / "README.md").read_text()

    def section(title: str) -> str:
        return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]

    rows = [line.split("|") for line in section("Messages").splitlines() if line.startswith("| `")]
    documented = {re.findall(r"`(\w+)`", row[1])[0]: set(re.findall(r"`(\w+)`", row[2])) for row in rows}
    assert documented == {message_type(cls): set(cls.__struct_fields__) for cls in coinflip.DEFINITION.messages}
    source = (EXAMPLE / "tickroom_coinflip.py").read_text()
    assert {f"`{code}`" for code in re.findall(r'Refused\("(\w+)"', source)} <= set(
        re.findall(r"`\w+`", section("Errors")))
    assert all(f"`{name}`" in section("Options") for name in coinflip.CoinflipOptions.__struct_fields__)
    assert all(f"`{name}`" in section("Result") for name in coinflip.DEFINITION.figures)


# -- a node in this process ---------------------------------------------------------------------------


async def get_json(url: str) -> tuple[int, Any]:
    return await asyncio.to_thread(http_json, url)


async def test_get_modes_lists_the_installed_game_with_its_message_schema(
        coinflip_installed: Path, redis_url: str) -> None:
    app = await start_lobby_app(redis_url)
    try:
        status, body = await get_json(f"http://127.0.0.1:{app.port}/modes")
    finally:
        await app.__aexit__(None, None, None)
    assert status == 200
    coinflip = next(mode for mode in body["modes"] if mode["mode"] == "coinflip")
    assert (coinflip["seats"], coinflip["forming"], coinflip["clock"], coinflip["figures"]) == (
        {"min": 2, "max": 2, "line": 0, "backfill": False}, "at_once", {"kind": "events"}, ["correct"])
    call = coinflip["$defs"]["Call"]
    assert coinflip["messages"] == {"call": {"$ref": "#/$defs/Call"}}
    assert call["properties"] == {"type": {"enum": ["call"]}, "side": {"enum": ["heads", "tails"]}}
    assert call["required"] == ["type", "side"]


async def enter_match(token: str, found: Message) -> tuple[ClientConnection, Message]:
    """Follow `match_found` to the game with the token: hello, then the welcome."""
    ws = await connect(found["url"], additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
                       open_timeout=5)
    await ws.send('{"type":"hello","v":1}')
    return ws, await recv_until(ws, lambda m: m["type"] in ("welcome", "error"))


async def play_out(ws: ClientConnection, bot: Any) -> list[Message]:
    """Everything the player receives until `match_end`, each message fed to the game's own bot policy and its
    answers sent, as `tickroom bot` does."""
    seen = []
    while True:
        message = await recv_json(ws, timeout=5)
        seen.append(message)
        for reply in bot.on_message(message, 0):
            await ws.send(orjson.dumps(reply).decode())
        if message["type"] == "match_end":
            return seen


async def test_two_players_matched_by_the_lobby_play_coinflip_to_a_win_recorded_once_in_postgres(
        coinflip_installed: Path, redis_url: str, fresh_database: str) -> None:
    await migrate_url(fresh_database)
    app = await start_lobby_app(redis_url, database_url=fresh_database, persist=True)
    try:
        # Answered once the node has checked each mode's leaderboard at start (rebuilt from Postgres if missing).
        assert await get_json(f"http://127.0.0.1:{app.port}/leaderboard?mode=coinflip") == (
            200, {"mode": "coinflip", "players": []})
        ids = {"ann": str(uuid.uuid4()), "bob": str(uuid.uuid4())}
        tokens = {name: new_token(name, player_id=player_id) for name, player_id in ids.items()}
        lobbies = [await join_lobby(app, tokens[name], mode="coinflip") for name in ids]
        founds = [await recv_until(lobby, is_type("match_found")) for lobby in lobbies]
        assert founds[0]["room"] == founds[1]["room"]
        (ann, ann_welcome), (bob, bob_welcome) = [await enter_match(tokens[name], found)
                                                  for name, found in zip(ids, founds, strict=True)]
        assert (ann_welcome["type"], ann_welcome["mode"], ann_welcome["points_to_win"]) == ("welcome", "coinflip", 3)
        ann_p, bob_p = ann_welcome["you"], bob_welcome["you"]
        # The game's own bot policy plays both players; ann's first call waits for the wrong ones below.
        coinflip = coinflip_module()
        ann_bot, bob_bot = coinflip.CoinflipBot(random.Random(1)), coinflip.CoinflipBot(random.Random(2))
        assert ann_bot.on_message(ann_welcome, 0) == [] and bob_bot.on_message(bob_welcome, 0) == []
        first = await recv_until(ann, lambda m: m["type"] == "state" and m["round"] == 1)
        assert first["to_call"] == [ann_p, bob_p] and first["last"] is None

        await ann.send('{"type":"call","side":"edge"}')
        bad = await recv_until(ann, is_type("error"))
        assert bad["code"] == "bad_field" and "side" in bad["message"]
        [call] = ann_bot.on_message(first, 0)
        await ann.send(orjson.dumps(call).decode())  # the connection stayed: this call counts
        await recv_until(ann, lambda m: m["type"] == "state" and m["round"] == 1 and m["to_call"] == [bob_p])
        await ann.send('{"type":"call","side":"tails"}')
        again = await recv_until(ann, is_type("error"))
        assert again["code"] == "already_called"

        ann_seen, bob_seen = await asyncio.gather(play_out(ann, ann_bot), play_out(bob, bob_bot))
        for seen in (ann_seen, bob_seen):
            assert [m for m in seen if m["type"] == "error"] == []
        end = ann_seen[-1]
        assert bob_seen[-1] == end and end["reason"] == "won"
        flips = [m for m in ann_seen if m["type"] == "event" and m["kind"] == "flip"]
        right = {p: sum(p in flip["right"] for flip in flips) for p in (ann_p, bob_p)}
        winner, loser = sorted(end["ranking"], key=lambda line: line["rank"])
        assert (winner["rank"], winner["score"], loser["rank"], loser["score"]) == (1, 1, 2, 0)
        assert {line["p"]: line["correct"] for line in end["ranking"]} == right
        assert winner["correct"] >= 3 and winner["correct"] > loser["correct"]
        assert flips[0]["round"] == 1 and flips[0]["calls"][str(ann_p)] == call["side"]

        await recv_until(ann, is_event("result_saved"), timeout=10)
        conn = await asyncpg.connect(fresh_database)
        try:
            matches = await conn.fetch("SELECT id, mode, state, end_reason FROM matches")
            lines = await conn.fetch("SELECT player_id, rank, score, figures FROM match_players ORDER BY rank")
            events = await conn.fetch("SELECT seq, body FROM match_events ORDER BY seq")
        finally:
            await conn.close()
        assert [(str(r["id"]), r["mode"], r["state"], r["end_reason"]) for r in matches] == [
            (end["match"], "coinflip", "finished", "won")]
        assert [(str(r["player_id"]), r["rank"], r["score"], orjson.loads(r["figures"])) for r in lines] == [
            (line["id"], line["rank"], line["score"], {"correct": line["correct"]}) for line in (winner, loser)]
        assert [(r["seq"], orjson.loads(r["body"])["round"]) for r in events] == [
            (n, flip["round"]) for n, flip in enumerate(flips, start=1)]

        # The per-mode leaderboard counts the win (and nothing else: a lead during the match is not one); the
        # loser is listed with 0, as a rebuild from Postgres lists every player of a finished match.
        deadline = time.monotonic() + 5
        while (board := await get_json(f"http://127.0.0.1:{app.port}/leaderboard?mode=coinflip"))[1]["players"] \
                != [{"rank": 1, "id": winner["id"], "name": winner["name"], "score": 1},
                    {"rank": 2, "id": loser["id"], "name": loser["name"], "score": 0}]:
            assert time.monotonic() < deadline, f"the leaderboard is {board}"
            await asyncio.sleep(0.05)
        for ws in (ann, bob, *lobbies):
            await ws.close()
    finally:
        await app.__aexit__(None, None, None)


# -- `tickroom serve` ----------------------------------------------------------------------------------


def serve_environment(installed: Path, games: str) -> dict[str, str]:
    env = child_environment()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(installed), env.get("PYTHONPATH")]))
    env["TICKROOM_GAMES"] = games
    return env


async def test_tickroom_serve_serves_exactly_the_games_tickroom_games_names_an_installed_one_among_them(
        installed: Path, redis_url: str, fresh_database: str, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            TICKROOM, "serve", "--workers", "1", "--host", "127.0.0.1", "--port", str(port), "--node-id", "plugin-node",
            "--redis-url", redis_url, "--database-url", fresh_database, "--lobby-prefix", lobby_prefix(),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            env=serve_environment(installed, "arena,coinflip"))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.returncode is None, f"tickroom serve exited early:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"tickroom serve never answered /modes:\n{log_path.read_text()}"
            try:
                status, body = await get_json(f"http://127.0.0.1:{port}/modes")
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert status == 200
        assert [mode["mode"] for mode in body["modes"]] == ["arena", "coinflip"]
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.wait(), 30) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


def test_tickroom_serve_refuses_to_start_with_a_game_that_is_not_installed(installed: Path) -> None:
    result = subprocess.run([TICKROOM, "serve", "--port", "0"], env=serve_environment(installed, "nosuchgame"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "nosuchgame" in result.stderr and "'coinflip'" in result.stderr  # the installed games are listed
