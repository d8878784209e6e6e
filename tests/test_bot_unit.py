"""The bot's pure parts, as plain function calls: settings, naming and process split, steering, the
summary over merged samples, the progress line, and one bot's message handling fed with fake frames."""

from __future__ import annotations

import argparse
import math
import random
from array import array
from collections import Counter
from typing import Any, cast

import orjson
import pytest
from picows import WSHandshakeError, WSMsgType, WSTransport
from picows.picows import _make_test_ws_frame

from bot.cli import build_parser
from bot.client import BotClient, Group, Phase, Tally, handshake_error_code
from bot.plan import (
    GROUP_SIZE,
    ROOM_ID,
    BotSettings,
    BotSettingsError,
    bot_spec,
    plan_processes,
    room_id,
    split_bots,
)
from bot.stats import ProcessResult, Progress, ProgressBoard, bot_rate, percentile, summarize
from game.arena_bot import WALL_MARGIN, ArenaBot, steer
from server.net.auth import NAME_MAX
from server.ops.settings import DEV_SECRET

# -- settings, names, rooms, split ---------------------------------------------------------------


def settings_from(*argv: str, environ: dict[str, str] | None = None, run_id: str = "abc123") -> BotSettings:
    return BotSettings.from_args(build_parser().parse_args(list(argv)), environ or {}, run_id=run_id)


def test_flags_default_to_a_small_local_run() -> None:
    settings = settings_from()
    assert (settings.url, settings.bots, settings.duration_s, settings.room) == ("ws://127.0.0.1:8000", 5, 30.0, None)
    assert (settings.processes, settings.ramp_s, settings.json, settings.quiet) == (1, 2.0, False, False)
    assert settings.secret == DEV_SECRET


def test_secret_comes_from_the_flag_then_the_environment_then_the_development_secret() -> None:
    assert settings_from("--secret", "flag-secret", environ={"TICKROOM_JWT_SECRET": "env"}).secret == "flag-secret"
    assert settings_from(environ={"TICKROOM_JWT_SECRET": "env-secret"}).secret == "env-secret"
    assert settings_from().secret == DEV_SECRET


@pytest.mark.parametrize("argv, named", [
    (["--url", "http://127.0.0.1:8000"], "--url"),
    (["--url", "ws://h:1/game?room=x"], "--url"),
    (["--bots", "0"], "--bots"),
    (["--duration", "0"], "--duration"),
    (["--ramp", "-1"], "--ramp"),
    (["--processes", "0"], "--processes"),
    (["--room", "no spaces"], "--room"),
    (["--room", "r" * 60], "--room"),
])
def test_a_bad_flag_is_refused_with_its_name(argv: list[str], named: str) -> None:
    with pytest.raises(BotSettingsError, match=named):
        settings_from(*argv)


def test_the_url_loses_its_trailing_slash() -> None:
    assert settings_from("--url", "ws://example.org:9000/").url == "ws://example.org:9000"


def test_each_bot_has_a_unique_short_name_and_player_id() -> None:
    specs = [bot_spec("abc123", i, grouped=True) for i in range(1000)]
    assert len({spec.name for spec in specs}) == len({spec.player_id for spec in specs}) == 1000
    assert all(len(spec.name) <= NAME_MAX for spec in specs)
    assert specs[0].name == "bot-abc123-0"
    assert [spec.group for spec in specs[:11]] == [0] * 5 + [1] * 5 + [2]
    assert bot_spec("other1", 0, grouped=True).player_id != specs[0].player_id


def test_generated_rooms_are_unique_to_the_run_group_and_generation() -> None:
    settings = settings_from()
    assert room_id(settings, 3, 0) == "babc123-3-0"
    assert room_id(settings, 3, 1) == "babc123-3-1"
    assert room_id(settings_from(run_id="def456"), 3, 0) != room_id(settings, 3, 0)
    assert ROOM_ID.fullmatch(room_id(settings, 999_999, 999_999))


def test_a_named_room_gets_a_suffix_for_each_later_match() -> None:
    settings = settings_from("--room", "arena1")
    assert [room_id(settings, 0, g) for g in range(3)] == ["arena1", "arena1-1", "arena1-2"]
    longest = settings_from("--room", "r" * 57)
    assert ROOM_ID.fullmatch(room_id(longest, 0, 999_999))


def test_the_split_keeps_each_room_group_in_one_process_and_covers_every_bot() -> None:
    slices = split_bots(23, 2, grouped=True)
    assert slices == [range(0, 15), range(15, 23)]
    for piece in slices:
        assert piece.start % GROUP_SIZE == 0
    assert split_bots(10, 4, grouped=True) == [range(0, 5), range(5, 10)]  # only two groups
    assert split_bots(7, 3, grouped=False) == [range(0, 3), range(3, 5), range(5, 7)]
    assert split_bots(3, 1, grouped=True) == [range(0, 3)]


def test_the_process_count_is_capped_by_the_number_of_groups() -> None:
    settings = settings_from("--bots", "12", "--processes", "8")
    assert settings.processes == 3
    plans = plan_processes(settings, started_at=100.0)
    assert [len(plan.bots) for plan in plans] == [5, 5, 2]
    assert all(plan.ends_at == 100.0 + settings.duration_s for plan in plans)
    assert [spec.index for plan in plans for spec in plan.bots] == list(range(12))


# -- steering ------------------------------------------------------------------------------------


def entry(p: int, x: float, y: float, alive: bool = True, seq: int = 0) -> dict[str, Any]:
    return {"p": p, "x": x, "y": y, "hp": 100, "k": 0, "d": 0, "sc": 0, "seq": seq, "alive": alive}


def test_a_bot_moves_toward_and_aims_at_the_nearest_living_player() -> None:
    players = [entry(1, 500, 500), entry(2, 850, 500), entry(3, 500, 200), entry(4, 510, 505, alive=False)]
    dx, dy, angle = steer(1, players, 0.0, 1.0, 1000, 1000)
    assert (dx, dy) == (0.0, -1.0)  # player 3 is 300 away, player 2 is 350 away, player 4 is dead
    assert angle == pytest.approx(-math.pi / 2)


def test_a_bot_circles_a_target_that_is_close() -> None:
    dx, dy, angle = steer(1, [entry(1, 500, 500), entry(2, 600, 500)], 0.0, 1.0, 1000, 1000)
    assert angle == pytest.approx(0.0)
    assert (dx, dy) == (0.0, 1.0)
    dx, dy, _ = steer(1, [entry(1, 500, 500), entry(2, 600, 500)], 0.0, -1.0, 1000, 1000)
    assert (dx, dy) == (0.0, -1.0)


def test_a_bot_near_a_wall_steers_away_from_it() -> None:
    # The target is beyond the left wall's side; 10 units from the wall, the push wins.
    dx, _, _ = steer(1, [entry(1, 10, 500), entry(2, 0, 500)], 0.0, 1.0, 1000, 1000)
    assert dx > 0
    dx, dy, _ = steer(1, [entry(1, 995, 995)], math.pi / 4, 1.0, 1000, 1000)  # alone, heading into the corner
    assert dx < 0 and dy < 0
    dx, dy, _ = steer(1, [entry(1, 500, WALL_MARGIN + 1)], -math.pi / 2, 1.0, 1000, 1000)
    assert (dx, dy) == (0.0, -1.0)  # outside the margin nothing pushes


def test_a_lone_bot_wanders_along_its_heading_and_aims_where_it_goes() -> None:
    dx, dy, angle = steer(1, [entry(1, 500, 500), entry(2, 100, 100, alive=False)], 0.3, 1.0, 1000, 1000)
    assert (dx, dy) == pytest.approx((math.cos(0.3), math.sin(0.3)), abs=0.0005)
    assert angle == pytest.approx(0.3)


def test_a_dead_or_missing_bot_stands_still() -> None:
    assert steer(1, [entry(1, 500, 500, alive=False), entry(2, 0, 0)], 1.0, 1.0, 1000, 1000) == (0.0, 0.0, 1.0)
    assert steer(1, [], 1.0, 1.0, 1000, 1000) == (0.0, 0.0, 1.0)


def test_moves_and_aims_stay_within_the_protocol_ranges() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        players = [entry(p, rng.uniform(0, 1000), rng.uniform(0, 1000), alive=rng.random() < 0.8)
                   for p in range(1, 6)]
        dx, dy, angle = steer(1, players, rng.uniform(-math.pi, math.pi), rng.choice((-1.0, 1.0)), 1000, 1000)
        assert -1 <= dx <= 1 and -1 <= dy <= 1 and math.hypot(dx, dy) <= 1.0015
        assert -2 * math.pi <= angle <= 2 * math.pi


# -- summary -------------------------------------------------------------------------------------


def test_percentiles_interpolate_between_sorted_samples() -> None:
    assert percentile([], 50) is None
    assert percentile([4.0], 99) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(v) for v in range(101)], 99) == pytest.approx(99.0)
    assert percentile([1.0, 2.0], 100) == 2.0


def test_a_bot_rate_is_zero_when_it_never_got_in_and_unmeasured_when_too_short() -> None:
    assert bot_rate(0, 0.0, welcomed=False) == 0.0
    assert bot_rate(30, 0.5, welcomed=True) is None
    assert bot_rate(660, 10.0, welcomed=True) == 66.0


def test_the_summary_merges_every_process_samples() -> None:
    first = ProcessResult(process=0, bots=2, rates=array("d", [66.0, 60.0]), acks_ms=array("d", [10.0, 30.0]),
                          lag_ms=array("d", [1.0]), connected=2, connected_s=20.0, states=1300, inputs=600,
                          errors=Counter({"room_full": 2}), disconnects=1, matches={"r-0", "r-1"}, cpu_s=4.0)
    second = ProcessResult(process=1, bots=1, rates=array("d", [67.0]), acks_ms=array("d", [20.0]),
                           connected=1, connected_s=10.0, states=670, inputs=300,
                           errors=Counter({"room_full": 1, "http_401": 1}), matches={"r-1"}, cpu_s=3.0)
    summary = summarize([first, second], bots=3, duration_s=10.0, wall_s=10.0, extra_cpu_s=1.0)
    assert summary["states_per_s_p50"] == 66.0
    assert summary["states_per_s_min"] == 60.0
    assert summary["ack_ms_p50"] == 20.0
    assert summary["ack_ms_p99"] == pytest.approx(29.8)
    assert summary["ack_ms_max"] == 30.0
    assert summary["errors"] == 4
    assert summary["error_codes"] == {"http_401": 1, "room_full": 3}
    assert (summary["disconnects"], summary["matches"], summary["connected"]) == (1, 2, 3)
    assert summary["inputs_per_s_mean"] == 30.0
    assert summary["cpu_percent"] == 80.0
    assert (summary["bots"], summary["processes"], summary["states"]) == (3, 2, 1970)
    assert orjson.loads(orjson.dumps(summary)) == summary


def test_the_summary_tells_the_rates_of_bots_that_got_into_a_room_from_those_refused_throughout() -> None:
    # Under overload, one bot played at 64 states/s and one was refused `capacity` until the end (rate 0).
    result = ProcessResult(process=0, bots=3, rates=array("d", [64.0, 0.0, 66.0]),
                           placed_rates=array("d", [64.0, 66.0]), connected=2, connected_s=20.0, capacity=7)
    summary = summarize([result], bots=3, duration_s=10.0, wall_s=10.0)
    assert (summary["states_per_s_min"], summary["bots_under_60_states_per_s"]) == (0.0, 1)
    assert (summary["states_per_s_min_placed"], summary["placed_under_60_states_per_s"]) == (64.0, 0)
    assert summary["capacity_refusals"] == 7


def test_a_summary_without_samples_says_zero_rates_and_no_latency() -> None:
    summary = summarize([ProcessResult(process=0, bots=5)], bots=5, duration_s=3.0, wall_s=3.0)
    assert (summary["states_per_s_p50"], summary["states_per_s_min"]) == (0.0, 0.0)
    assert summary["ack_ms_p50"] is None and summary["ack_ms_p99"] is None
    assert summary["connected"] == 0
    required = {"bots", "duration_s", "states_per_s_p50", "states_per_s_min", "ack_ms_p50", "ack_ms_p99",
                "errors", "disconnects", "matches", "connected", "cpu_percent"}
    assert required <= summary.keys()


def test_the_progress_line_merges_processes_and_shows_recent_acks_once() -> None:
    board = ProgressBoard(bots=10, started_at=100.0)
    board.update(Progress(process=0, at=101.0, playing=5, states=330, inputs=150, errors=1, disconnects=0,
                          matches=0, acks_ms=array("d", [5.0, 7.0])))
    board.update(Progress(process=1, at=101.0, playing=5, states=340, inputs=150, errors=0, disconnects=2,
                          matches=1, acks_ms=array("d", [9.0])))
    line = board.line(101.0)
    assert "bots 10/10" in line and "states/s  67.0/bot (670 total)" in line and "inputs/s 30.0/bot" in line
    assert "ack p50/p99 7.0/" in line and "errors 1" in line and "disconnects 2" in line and "matches 1" in line
    board.update(Progress(process=0, at=102.0, playing=0, states=330, inputs=150, errors=1, disconnects=0,
                          matches=0, acks_ms=array("d")))
    assert "ack p50/p99 -" in board.line(102.0)


# -- one bot's message handling ------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed_with: Any = None

    def send(self, msg_type: WSMsgType, message: bytes) -> None:
        self.sent.append(orjson.loads(message))

    def send_close(self, code: Any = None, message: Any = None) -> None:
        self.closed_with = code

    def disconnect(self, graceful: bool = True) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_bot(**flags: str) -> tuple[BotClient, FakeTransport, FakeClock, Tally]:
    settings = settings_from(*[item for key, value in flags.items() for item in (f"--{key}", value)])
    clock = FakeClock()
    tally = Tally()
    bot = BotClient(bot_spec(settings.run_id, 0, grouped=True), settings.url, "token", Group(settings, 0), tally,
                    random.Random(1), ArenaBot(random.Random(2)), clock)
    transport = FakeTransport()
    bot.on_ws_connected(cast(WSTransport, transport))
    return bot, transport, clock, tally


def phase(bot: BotClient) -> Phase:
    return bot.phase


def feed(bot: BotClient, transport: FakeTransport, message: dict[str, Any]) -> None:
    frame = _make_test_ws_frame(WSMsgType.TEXT, orjson.dumps(message), True, False)
    bot.on_ws_frame(cast(WSTransport, transport), frame)


WELCOME = {"type": "welcome", "v": 1, "room": "r", "mode": "arena", "you": 2, "id": "x", "state": "waiting",
           "tick_ms": 15, "arena": {"w": 1000, "h": 1000}, "countdown_ms": None, "players": []}


def state(seq: int) -> dict[str, Any]:
    return {"type": "state", "tick": 1, "t": 0, "players": [entry(1, 100, 100), entry(2, 500, 500, seq=seq)],
            "projectiles": []}


def test_a_bot_says_hello_and_plays_after_welcome() -> None:
    bot, transport, _, _ = new_bot()
    assert transport.sent == [{"type": "hello", "v": 1}]
    assert phase(bot) is Phase.JOINING
    feed(bot, transport, state(0))
    assert bot.states == 0  # not counted before welcome
    feed(bot, transport, WELCOME)
    assert phase(bot) is Phase.PLAYING and bot.you == 2 and bot.welcomed


def test_an_input_is_acknowledged_by_the_first_state_showing_its_seq() -> None:
    bot, transport, clock, tally = new_bot()
    feed(bot, transport, WELCOME)
    feed(bot, transport, state(0))
    bot.act()
    clock.now += 0.010
    bot.act()
    assert [m["seq"] for m in transport.sent[1:]] == [1, 2] and transport.sent[1]["type"] == "input"
    clock.now += 0.005
    feed(bot, transport, state(1))
    assert list(tally.acks_ms) == [pytest.approx(15.0)]
    clock.now += 0.010
    feed(bot, transport, state(1))  # no progress: nothing new acknowledged
    feed(bot, transport, state(2))
    assert list(tally.acks_ms) == [pytest.approx(15.0), pytest.approx(15.0)]
    assert bot.states == 4


def test_a_later_seq_acknowledges_every_earlier_pending_input() -> None:
    bot, transport, clock, tally = new_bot()
    feed(bot, transport, WELCOME)
    for _ in range(3):
        bot.act()
        clock.now += 0.001
    feed(bot, transport, state(3))
    assert [round(ack) for ack in tally.acks_ms] == [3, 2, 1]
    assert not bot.pending


def test_every_fifteenth_input_is_followed_by_a_fire_on_the_same_seq_counter() -> None:
    bot, transport, _, _ = new_bot()
    feed(bot, transport, WELCOME)
    feed(bot, transport, state(0))
    for _ in range(15):
        bot.act()
    sent = transport.sent[1:]
    assert [m["type"] for m in sent] == ["input"] * 15 + ["fire"]
    assert [m["seq"] for m in sent] == list(range(1, 17))
    assert abs(sent[-1]["angle"] - math.atan2(100 - 500, 100 - 500)) < 0.001


def test_match_end_moves_the_group_on_and_leaves_without_counting_a_disconnect() -> None:
    bot, transport, clock, tally = new_bot()
    bot.room = bot.group.room(0)
    feed(bot, transport, WELCOME)
    clock.now += 2.0
    feed(bot, transport, {"type": "match_end", "reason": "kills", "duration_ms": 1, "ranking": []})
    assert transport.sent[-1] == {"type": "leave"}
    assert phase(bot) is Phase.LEAVING and bot.group.generation == 1
    assert tally.matches == {bot.room} and bot.connected_s == pytest.approx(2.0)
    feed(bot, transport, state(0))
    assert bot.states == 0  # the measuring window closed at match_end
    bot.on_ws_disconnected(cast(WSTransport, transport))
    assert tally.disconnects == 0 and phase(bot) is Phase.IDLE


def test_a_server_close_while_playing_counts_as_a_disconnect() -> None:
    bot, transport, clock, tally = new_bot()
    feed(bot, transport, WELCOME)
    bot.act()
    clock.now += 1.5
    bot.on_ws_disconnected(cast(WSTransport, transport))
    assert tally.disconnects == 1 and bot.connected_s == pytest.approx(1.5) and not bot.pending


def test_an_error_is_counted_and_a_closed_room_moves_the_group_on() -> None:
    bot, transport, _, tally = new_bot()
    feed(bot, transport, {"type": "error", "code": "room_closed", "message": "over"})
    assert tally.errors == Counter({"room_closed": 1}) and bot.refused
    assert bot.group.generation == 1
    bot.on_ws_disconnected(cast(WSTransport, transport))
    assert tally.disconnects == 0 and sum(tally.errors.values()) == 1


def test_a_close_before_welcome_without_an_error_counts_as_an_error() -> None:
    bot, transport, _, tally = new_bot()
    bot.on_ws_disconnected(cast(WSTransport, transport))
    assert tally.errors == Counter({"closed_before_welcome": 1})


def test_a_server_close_frame_is_answered_with_the_same_code() -> None:
    bot, transport, _, _ = new_bot()
    frame = _make_test_ws_frame(WSMsgType.CLOSE, (1000).to_bytes(2, "big") + b"bye", True, False)
    bot.on_ws_frame(cast(WSTransport, transport), frame)
    assert int(transport.closed_with.value) == 1000


def test_end_of_run_sends_leave_once_and_closes_the_window() -> None:
    bot, transport, clock, _ = new_bot()
    feed(bot, transport, WELCOME)
    clock.now += 3.0
    bot.leave()
    bot.leave()
    assert [m for m in transport.sent if m["type"] == "leave"] == [{"type": "leave"}]
    assert bot.connected_s == pytest.approx(3.0)


def test_a_refused_handshake_is_named_by_its_protocol_code_or_http_status() -> None:
    assert handshake_error_code(WSHandshakeError("refused", b"", b'{"error":"token_invalid","message":"x"}')) \
        == "token_invalid"
    assert handshake_error_code(WSHandshakeError("refused", b"", b"not json")) == "handshake_failed"


def test_bot_flags_parse_for_the_tickroom_subcommand_too() -> None:
    parser = argparse.ArgumentParser()
    from bot.cli import add_arguments

    add_arguments(parser)
    args = parser.parse_args(["--bots", "500", "--processes", "2", "--json", "--quiet", "--room", "x"])
    assert (args.bots, args.processes, args.json, args.quiet, args.room) == (500, 2, True, True, "x")
