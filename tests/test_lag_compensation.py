"""The arena's lag compensation: a `fire` naming the tick its player was looking at is resolved against where
the others were then. Plain calls, stepped the way the room host steps a game: tick N is `advance(N * tick_ms)`."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest

from game.api import Game, GameContext
from game.arena import DEFINITION, ArenaConfig, ArenaGame, Fire, Input
from game.arena_bot import ArenaBot
from server.net.protocol import HOST_MESSAGES, ErrorCode, MessageDecoder, ProtocolError
from server.ops.settings import Settings
from server.rooms.catalog import hosted
from tests.serverkit import join_game, recv_until, start_app

SHOT_SPEED = 600.0
DELAY_MS = 100  # how far behind the server the shooter's screen is: half a round trip plus interpolation
DEFAULT = ArenaConfig()


class Spots(random.Random):
    """A seeded RNG whose `uniform` first hands out queued values: spawn spots chosen by the test."""

    def __init__(self) -> None:
        super().__init__(1)
        self.queued: list[float] = []

    def queue(self, *spots: tuple[float, float]) -> None:
        for x, y in spots:
            self.queued += [x, y]

    def uniform(self, a: float, b: float) -> float:
        return self.queued.pop(0) if self.queued else super().uniform(a, b)


class Room:
    """A game stepped as the host steps it, keeping every state it showed by tick (what clients were shown)."""

    def __init__(self, *spots: tuple[float, float], tick_ms: float = 15.0, config: ArenaConfig = DEFAULT,
                 warm_up: int = 3) -> None:
        self.rng = Spots()
        self.game = ArenaGame(self.rng, config, tick_ms)
        self.tick_ms = tick_ms
        self.tick_no = 0
        self.states: dict[int, dict[str, Any]] = {}
        self.events: dict[int, list[dict[str, Any]]] = {}
        self.rng.queue(*spots)
        for pid in range(1, len(spots) + 1):
            self.game.add_player(pid)
        self.run(warm_up)  # a room steps its game from its first tick on, before the match starts
        self.rng.queue(*spots)
        self.game.start(self.now_ms)  # as the host does: at the start of a tick, before that tick's step
        self.run(1)
        assert not self.rng.queued

    @property
    def now_ms(self) -> int:
        return round(self.tick_no * self.tick_ms)

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick_no += 1
            self.game.advance(self.now_ms)
            self.states[self.tick_no] = self.game.state()
            self.events[self.tick_no] = [event.body for event in self.game.drain_events()]

    def send(self, pid: int, message: Input | Fire) -> None:
        """A message arriving between this tick and the next, as the host hands it over."""
        self.game.handle(pid, message, self.now_ms)

    def where(self, pid: int, tick: int) -> tuple[float, float]:
        (entry,) = [entry for entry in self.states[tick]["players"] if entry["p"] == pid]
        return entry["x"], entry["y"]

    def hits(self) -> list[tuple[int, dict[str, Any]]]:
        return [(tick, event) for tick, events in self.events.items() for event in events if event["kind"] == "hit"]

    def shots(self) -> list[dict[str, Any]]:
        """The projectiles of the latest state."""
        shots: list[dict[str, Any]] = self.states[self.tick_no]["projectiles"]
        return shots


def delay_ticks(tick_ms: float) -> int:
    return math.ceil(DELAY_MS / tick_ms)


def lead(shooter: tuple[float, float], target: tuple[float, float],
         velocity: tuple[float, float]) -> tuple[float, float]:
    """The angle at which a shot from `shooter` meets a target at `target` moving at `velocity` (units/s),
    and the seconds it takes to get there."""
    px, py = target[0] - shooter[0], target[1] - shooter[1]
    vx, vy = velocity
    a = vx * vx + vy * vy - SHOT_SPEED * SHOT_SPEED
    b = 2 * (px * vx + py * vy)
    c = px * px + py * py
    t = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return math.atan2(py + vy * t, px + vx * t), t


# -- the shot as the shooter saw it ----------------------------------------------------------------------------


@pytest.mark.parametrize("tick_ms", [15.0, 10.0])
def test_a_shot_led_on_a_screen_100_ms_late_hits_with_seen_tick_and_misses_without(tick_ms: float) -> None:
    """The shooter sees the target 100 ms late and leads it from what it sees; a 10-unit hit radius makes the
    20 units the target moves in 100 ms a clear miss for the shot resolved against the present."""
    hits = {}
    for with_seen_tick in (False, True):  # the same shot, at the same moment, resolved both ways
        room = Room((100, 500), (400, 150), (900, 900), tick_ms=tick_ms, config=ArenaConfig(hit_radius=10))
        room.send(2, Input(1, 0.0, 1.0))  # the target runs down at 200 units/s, across the line of fire
        room.run(30)
        seen = room.tick_no - delay_ticks(tick_ms)  # what the shooter has on screen: the newest state 100 ms old
        shown, before = room.where(2, seen), room.where(2, seen - 1)
        velocity = ((shown[0] - before[0]) / tick_ms * 1000, (shown[1] - before[1]) / tick_ms * 1000)
        assert velocity[0] == 0.0 and velocity[1] == pytest.approx(200.0, abs=10)
        angle, flight_s = lead(room.where(1, seen), shown, velocity)
        room.send(1, Fire(1, angle, seen_tick=seen if with_seen_tick else None))
        room.run(80)
        hits[with_seen_tick] = room.hits()
    assert hits[False] == []
    (tick, hit), = hits[True]
    assert hit == {"kind": "hit", "p": 1, "target": 2, "hp": 90}
    # It lands as far into its flight as the shooter's lead said (`seen`, `flight_s`: of this last run).
    assert (tick - seen) * tick_ms / 1000 == pytest.approx(flight_s, abs=1.5 * tick_ms / 1000)


def view_outcome(room: Room, seen: int, shooter: tuple[float, float], angle: float, target: int,
                 radius: float) -> tuple[int | None, float]:
    """What the shooter's screen shows: its shot k ticks into its flight beside the state of tick seen + k.
    The first tick at which they touch (None: never), and how close any pass came to the hit radius."""
    vx, vy = math.cos(angle) * SHOT_SPEED, math.sin(angle) * SHOT_SPEED
    margin = math.inf
    for k in range(1, round(1000 / room.tick_ms) + 1):
        x = shooter[0] + vx * k * room.tick_ms / 1000
        y = shooter[1] + vy * k * room.tick_ms / 1000
        if not (0 <= x <= 1000 and 0 <= y <= 1000) or seen + k not in room.states:
            break
        gap = math.dist((x, y), room.where(target, seen + k))
        margin = min(margin, abs(gap - radius))
        if gap <= radius:
            return seen + k, margin
    return None, margin


def test_every_shot_lands_as_the_shooters_screen_showed_it_and_without_seen_tick_some_do_not() -> None:
    radius = ArenaConfig().hit_radius
    agree = {True: 0, False: 0}
    differ = {True: 0, False: 0}
    delay = delay_ticks(15.0)
    for step in range(-40, 41):
        for with_seen_tick in (True, False):
            room = Room((100, 500), (400, 150), (900, 900))
            room.send(2, Input(1, 0.0, 1.0))
            room.run(30)
            seen = room.tick_no - delay
            aim, _ = lead(room.where(1, seen), room.where(2, seen), (0.0, 200.0))
            angle = aim + step * 0.005  # a sweep across the target's path, around the lead
            now = room.tick_no
            room.send(1, Fire(1, angle, seen_tick=seen if with_seen_tick else None))
            room.run(80)
            saw_hit_at, margin = view_outcome(room, seen, room.where(1, seen), angle, 2, radius)
            if margin < 0.2:
                continue  # a graze that the states' one-decimal positions cannot decide
            hits = room.hits()
            if saw_hit_at is None:
                same = hits == []
            else:
                # A hit in the rewound ticks is dealt at once: its event comes with the next state.
                same = [tick for tick, _ in hits] == [max(saw_hit_at, now + 1)]
            (agree if same else differ)[with_seen_tick] += 1
    assert differ[True] == 0 and agree[True] >= 75
    assert differ[False] >= 20  # resolved against the present, a quarter of them land otherwise than shown


def test_a_rewound_shot_shows_up_as_far_along_as_it_has_flown_since_the_seen_tick_and_lives_from_then() -> None:
    room = Room((100, 500), (100, 100))
    room.run(20)
    room.send(1, Fire(1, 0.0, seen_tick=room.tick_no - 5))
    room.send(2, Fire(1, 0.0))
    room.run(1)
    assert [(shot["id"], shot["x"]) for shot in room.shots()] == [(1, 100 + 6 * 9), (2, 100 + 9)]
    room.run(60)
    assert [shot["id"] for shot in room.shots()] == [1, 2]
    room.run(1)
    assert [shot["id"] for shot in room.shots()] == [2]  # its second of life counted from the seen tick
    room.run(5)
    assert room.shots() == []


def test_a_seen_tick_older_than_200_ms_is_rewound_200_ms_and_one_in_the_future_not_at_all() -> None:
    def flown(seen_offset: int | None) -> float:
        """Steps a shot fired with seen_tick = now + seen_offset has flown in the next state: those rewound,
        and that tick's."""
        room = Room((100, 500), (900, 900))
        room.run(40)
        room.send(1, Fire(1, 0.0, seen_tick=None if seen_offset is None else room.tick_no + seen_offset))
        room.run(1)
        (shot,) = room.shots()
        return round((float(shot["x"]) - 100) / 9, 2)

    assert flown(-12) == 13
    assert flown(-13) == 14  # 195 ms: the oldest tick within 200 ms
    assert flown(-14) == flown(-40) == flown(-43) == 14  # -43: tick 1, before the match began
    assert flown(0) == flown(1) == flown(10**15) == flown(None) == 1


def test_the_rewind_goes_no_further_back_than_the_match_has_been_recorded() -> None:
    room = Room((100, 500), (900, 900), warm_up=10)  # the match began at tick 11
    room.run(2)
    room.send(1, Fire(1, 0.0, seen_tick=5))
    room.run(1)
    (shot,) = room.shots()
    assert shot["x"] == pytest.approx(100 + 3 * 9)  # as seen at tick 11: flown 12, 13, then 14


def test_the_history_keeps_a_fixed_number_of_ticks_however_long_the_match() -> None:
    room = Room((100, 500), (500, 500), (900, 500))
    history = room.game.history
    assert history.capacity == 18  # 250 ms of 15 ms ticks, and the newest
    trails = [player.trail for player in room.game._players.values()]
    room.send(1, Input(1, 0.0, 1.0))
    room.run(2000)
    assert history.count == history.capacity == 18 and len(history.times) == 18
    assert all(player.trail is trail for player, trail in zip(room.game._players.values(), trails, strict=True))
    assert all(len(trail) == 3 * 18 for trail in trails)
    assert ArenaGame(random.Random(1), tick_ms=10.0).history.capacity == 26
    with pytest.raises(ValueError, match="history_s"):
        ArenaConfig(history_s=0.1, rewind_max_s=0.2)


# -- who a rewound shot may hit ------------------------------------------------------------------------------


@pytest.mark.parametrize("since", ["nothing", "killed", "respawned", "away"])
def test_a_rewound_shot_hits_only_a_target_there_in_the_same_life_as_now(since: str) -> None:
    """The shooter saw the target 10 ticks ago; its rewound shot crosses the target's spot 4 to 7 ticks
    after that. Meanwhile player 3 killed the target from below (5 ticks), or it also respawned elsewhere,
    or it was away."""
    config = ArenaConfig(damage=100, respawn_delay_s=0.03 if since == "respawned" else 2.0, spawn_clearance=1.0)
    room = Room((200, 500), (250, 500), (250, 560), (900, 900), config=config)
    room.rng.queue((600, 100))  # where a respawn puts the target
    room.run(20)
    seen = room.tick_no
    if since in ("killed", "respawned"):
        room.send(3, Fire(1, -math.pi / 2))
    if since == "away":
        room.game.remove_player(2)
    room.run(9)
    if since == "away":
        room.game.add_player(2)  # back where it was, one tick before the shot
    room.run(1)
    assert [e["kind"] for _, e in room.hits()] == ([] if since in ("nothing", "away") else ["hit"])
    assert room.where(2, room.tick_no) == ((600.0, 100.0) if since == "respawned" else (250.0, 500.0))
    room.send(1, Fire(1, 0.0, seen_tick=seen))
    room.run(1)
    by_shooter = [event for _, event in room.hits() if event["p"] == 1]
    assert by_shooter == ([{"kind": "hit", "p": 1, "target": 2, "hp": 0}] if since == "nothing" else [])
    if since != "nothing":
        assert [shot["p"] for shot in room.shots()] == [1]  # it flew on


def test_a_rewound_hit_that_decides_the_match_ends_it() -> None:
    room = Room((200, 500), (250, 500), (900, 900), config=ArenaConfig(damage=100, kill_target=1, spawn_clearance=1.0))
    room.run(20)
    room.send(1, Fire(1, 0.0, seen_tick=room.tick_no - 5))
    room.run(1)
    assert room.game.end_reason == "kills" and room.game.ranking()[0].pid == 1


# -- the wire, the host, snapshots and the bot ----------------------------------------------------------------

decode = MessageDecoder((*HOST_MESSAGES, *DEFINITION.messages)).decode


def test_seen_tick_is_an_optional_integer_tick() -> None:
    assert decode('{"type":"fire","seq":1,"angle":0.5,"seen_tick":1234}') == Fire(1, 0.5, seen_tick=1234)
    assert decode('{"type":"fire","seq":1,"angle":0.5}') == Fire(1, 0.5, seen_tick=None)
    assert decode('{"type":"fire","seq":1,"angle":0.5,"seen_tick":null}') == Fire(1, 0.5, seen_tick=None)
    assert decode('{"type":"fire","seq":1,"angle":0.5,"seen_tick":9007199254740991}') == Fire(1, 0.5, 2**53 - 1)


@pytest.mark.parametrize(("value", "code"), [
    ("0", ErrorCode.OUT_OF_RANGE), ("-3", ErrorCode.OUT_OF_RANGE), ("9007199254740992", ErrorCode.OUT_OF_RANGE),
    ("1e999", ErrorCode.OUT_OF_RANGE), ('"12"', ErrorCode.BAD_FIELD), ("12.0", ErrorCode.BAD_FIELD),
    ("12.5", ErrorCode.BAD_FIELD), ("true", ErrorCode.BAD_FIELD), ("[12]", ErrorCode.BAD_FIELD),
])
def test_a_bad_seen_tick_is_refused_naming_the_field(value: str, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as refused:
        decode('{"type":"fire","seq":1,"angle":0.5,"seen_tick":' + value + "}")
    assert refused.value.code is code
    assert "seen_tick" in str(refused.value)


def test_the_host_tells_the_game_its_tick_period_and_a_seen_tick_follows_it() -> None:
    made: list[GameContext] = []

    def make(ctx: GameContext) -> Game:
        made.append(ctx)
        return DEFINITION.make(ctx)

    games = [hosted(DEFINITION, Settings.load(environ=environ)).with_maker(make).make(random.Random(1), 0)
             for environ in ({}, {"TICKROOM_TICK_MS": "20"})]
    assert [ctx.tick_ms for ctx in made] == [pytest.approx(15.0), 20.0]
    assert [game.tick_ms for game in games if isinstance(game, ArenaGame)] == [pytest.approx(15.0), 20.0]
    # At 20 ms a tick, 5 ticks back is 100 ms: 5 steps of 12 units, then this tick's.
    room = Room((100, 500), (900, 900), tick_ms=20.0)
    room.run(20)
    room.send(1, Fire(1, 0.0, seen_tick=room.tick_no - 5))
    room.run(1)
    assert room.shots()[0]["x"] == pytest.approx(100 + 6 * 12)


async def test_over_a_real_node_a_seen_tick_rewinds_the_shot_by_the_ticks_since_that_state() -> None:
    """End to end, at an operator's 20 ms tick: the state numbered T is the one the shot is rewound to."""
    app = await start_app(tick_ms=20.0, min_players=2, max_players=2)
    try:
        (me_ws, welcome), (other_ws, _) = [await join_game(app, "lagcomp-e2e") for _ in range(2)]
        me = welcome["you"]
        state = await recv_until(me_ws, lambda m: m["type"] == "state" and m["t"] > 100)
        (mine,) = [(p["x"], p["y"]) for p in state["players"] if p["p"] == me]
        (theirs,) = [(p["x"], p["y"]) for p in state["players"] if p["p"] != me]
        angle = open_direction(mine, theirs)
        seen = state["tick"] - 3
        await me_ws.send(orjson.dumps({"type": "fire", "seq": 1, "angle": angle, "seen_tick": seen}).decode())
        shown = await recv_until(me_ws, lambda m: m["type"] == "state" and m["projectiles"] != [])
        (shot,) = shown["projectiles"]
        # Fired between ticks T - 1 and T, seen at `seen`: in the state of tick T it has flown T - seen steps.
        steps = shown["tick"] - seen
        assert 4 <= steps <= 11  # at most 200 ms of rewind, and this tick's step
        assert math.dist((shot["x"], shot["y"]), mine) == pytest.approx(steps * 12.0, abs=0.2)
        await me_ws.close()
        await other_ws.close()
    finally:
        await app.__aexit__(None, None, None)


def open_direction(me: tuple[float, float], other: tuple[float, float]) -> float:
    """A direction in which a shot from `me` flies 150 units in the arena, clear of `other`."""
    for step in range(16):
        angle = step * math.pi / 8 - math.pi
        dx, dy = math.cos(angle), math.sin(angle)
        end = (me[0] + 150 * dx, me[1] + 150 * dy)
        along = (other[0] - me[0]) * dx + (other[1] - me[1]) * dy
        across = abs((other[0] - me[0]) * dy - (other[1] - me[1]) * dx)
        if 0 <= end[0] <= 1000 and 0 <= end[1] <= 1000 and (along < 0 or across > 60):
            return angle
    raise AssertionError(f"no open direction from {me} with the other player at {other}")


def test_a_snapshot_keeps_its_layout_and_a_restored_match_rewinds_only_as_far_as_it_has_recorded_since() -> None:
    room = Room((100, 500), (900, 900))
    room.run(30)
    snapshot = room.game.snapshot()
    assert snapshot["v"] == 1 and set(snapshot) == {"v", "started", "now_us", "players"}
    assert set(snapshot["players"][0]) == {"pid", "x", "y", "hp", "kills", "deaths", "score", "alive", "in_match",
                                           "respawn_us"}
    restored = ArenaGame(random.Random(2), ArenaConfig(), 15.0)
    restored.restore(snapshot)
    restored.join(1, "a", room.now_ms)
    restored.join(2, "b", room.now_ms)
    for tick in range(room.tick_no + 1, room.tick_no + 4):  # the first advance only sets its clock
        restored.advance(round(tick * 15.0))
    restored.handle(1, Fire(1, 0.0, seen_tick=room.tick_no - 5), round((room.tick_no + 3) * 15.0))
    restored.advance(round((room.tick_no + 4) * 15.0))
    (shot,) = restored.state()["projectiles"]
    assert shot["x"] == pytest.approx(100 + 2 * 9)  # seen at the first tick it recorded: one rewound, then one


def test_the_bot_names_the_tick_of_the_state_it_aimed_at() -> None:
    bot = ArenaBot(random.Random(1))
    bot.on_message({"type": "welcome", "you": 1, "arena": {"w": 1000.0, "h": 1000.0}}, 0)
    fires = [m for _ in range(15) for m in bot.on_tick(0) if m["type"] == "fire"]
    assert fires and "seen_tick" not in fires[0]  # no state yet
    players = [{"p": 1, "x": 100.0, "y": 100.0, "alive": True}, {"p": 2, "x": 500.0, "y": 500.0, "alive": True}]
    bot.on_message({"type": "state", "tick": 4321, "t": 100, "players": players, "projectiles": []}, 0)
    fires = [m for _ in range(15) for m in bot.on_tick(0) if m["type"] == "fire"]
    assert fires[0]["seen_tick"] == 4321
    assert decode(orjson.dumps(fires[0])) == Fire(fires[0]["seq"], fires[0]["angle"], seen_tick=4321)
