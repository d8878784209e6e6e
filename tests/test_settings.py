"""Settings: environment first, flags on top, each bad value refused with its name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import build_parser, ready_line
from server.ops.settings import Settings, SettingsError


def test_environment_values_are_read_and_flags_override_them() -> None:
    args = build_parser().parse_args(["serve", "--port", "9001", "--countdown-s", "4.5"])
    settings = Settings.load({"TICKROOM_PORT": "9000", "TICKROOM_MAX_PLAYERS": "4"}, args)
    assert (settings.port, settings.max_players, settings.countdown_s) == (9001, 4, 4.5)
    assert settings.tick_ms == 0.0  # each fixed-tick game's own rate
    assert settings.node_id  # a default one is made up


@pytest.mark.parametrize(("environ", "named"), [
    ({"TICKROOM_PORT": "eighty"}, "TICKROOM_PORT"),
    ({"TICKROOM_PORT": "70000"}, "TICKROOM_PORT"),
    ({"TICKROOM_TICK_MS": "-1"}, "TICKROOM_TICK_MS"),
    ({"TICKROOM_MIN_PLAYERS": "6"}, "min_players"),
    ({"TICKROOM_LOG_LEVEL": "LOUD"}, "TICKROOM_LOG_LEVEL"),
    ({"TICKROOM_JWT_SECRET": ""}, "TICKROOM_JWT_SECRET"),
    ({"TICKROOM_BACKFILL": "maybe"}, "TICKROOM_BACKFILL"),
    ({"TICKROOM_PUBLIC_URL": "http://example.org"}, "TICKROOM_PUBLIC_URL"),
    ({"TICKROOM_LOBBY_PREFIX": "a{b}"}, "TICKROOM_LOBBY_PREFIX"),
    ({"TICKROOM_NODE_HEARTBEAT_S": "3", "TICKROOM_NODE_DEAD_AFTER_S": "4"}, "node_dead_after_s"),
])
def test_a_bad_value_is_refused_with_the_name_of_the_setting(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.load(environ)


def test_serve_with_a_bad_flag_exits_2_naming_it() -> None:
    tickroom = str(Path(sys.executable).with_name("tickroom"))
    result = subprocess.run([tickroom, "serve", "--max-rooms", "0"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "max_rooms" in result.stderr and "TICKROOM_MAX_ROOMS" in result.stderr


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("1", True), ("On", True), ("no", False), ("0", False)])
def test_switches_take_the_usual_spellings_of_true_and_false(raw: str, value: bool) -> None:
    assert Settings.load({"TICKROOM_BACKFILL": raw, "TICKROOM_DIRECT_JOIN": raw}).backfill is value


def test_the_public_url_defaults_to_the_listening_address() -> None:
    assert Settings.load({"TICKROOM_PORT": "9100"}).advertised_url == "ws://127.0.0.1:9100"
    assert Settings.load({"TICKROOM_PUBLIC_URL": "wss://play.example.org/"}).advertised_url == \
        "wss://play.example.org"


def test_the_ready_line_names_the_playground_the_lobby_and_the_game_url_only_with_direct_joins() -> None:
    url = "ws://127.0.0.1:8000"
    plain = ready_line(Settings.load(environ={}), url)
    assert f"{url}/lobby" in plain and "/game" not in plain
    assert "http://127.0.0.1:8000/play" in plain
    assert "/play" not in ready_line(Settings.load(environ={}, playground=False), url)
    assert "https://play.example.org/play" in ready_line(Settings.load(environ={}), "wss://play.example.org")
    direct = ready_line(Settings.load(environ={}, direct_join=True), url)
    assert f"{url}/lobby" in direct and f"{url}/game?room=ID" in direct
