"""Unit tests of the arena simulation: plain calls, a fixed dt, seeded or scripted randomness."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from game.api import Game, GameContext
from game.arena import DEFINITION, ArenaConfig, ArenaGame, RankEntry

DT = 0.01  # 10 ms: every time in these tests is a whole number of steps


class ScriptedRandom(random.Random):
    """A seeded RNG whose `uniform` first hands out queued values: spawn spots chosen by the test."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__(seed)
        self.queued: list[float] = []

    def queue_spots(self, *spots: tuple[float, float]) -> None:
        for x, y in spots:
            self.queued += [x, y]

    def uniform(self, a: float, b: float) -> float:
        if self.queued:
            return self.queued.pop(0)
        return super().uniform(a, b)


DEFAULT = ArenaConfig()


def match(*spots: tuple[float, float], config: ArenaConfig = DEFAULT) -> tuple[ArenaGame, ScriptedRandom]:
    """A started match with one player per spot (pids 1, 2, ...) placed exactly there."""
    rng = ScriptedRandom()
    game = ArenaGame(rng, config)
    for pid in range(1, len(spots) + 1):
        game.add_player(pid)
    rng.queue_spots(*spots)
    game.start()
    assert not rng.queued
    return game, rng


def run(game: ArenaGame, seconds: float, dt: float = DT) -> None:
    for _ in range(round(seconds / dt)):
        game.step(dt)


def player(game: ArenaGame, pid: int) -> dict[str, Any]:
    found: list[dict[str, Any]] = [entry for entry in game.players_state() if entry["p"] == pid]
    assert len(found) == 1, f"player {pid} is not listed"
    return found[0]


def drained(game: ArenaGame) -> list[dict[str, Any]]:
    """The bodies of the events since the last call (every arena event goes to everyone)."""
    events = game.drain_events()
    assert all(event.to is None and not event.record for event in events)
    return [event.body for event in events]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["kind"] for event in events]


ONE_SHOT = ArenaConfig(damage=100)


# -- movement ----------------------------------------------------------------------------------------


def test_player_moves_at_200_units_per_second_along_the_input_direction() -> None:
    game, _ = match((500, 500))
    game.set_input(1, 1, 0.6, -0.8)
    run(game, 0.5)
    me = player(game, 1)
    assert me["x"] == pytest.approx(500 + 0.6 * 100, abs=0.05)
    assert me["y"] == pytest.approx(500 - 0.8 * 100, abs=0.05)


def test_zero_input_stops_the_player() -> None:
    game, _ = match((500, 500))
    game.set_input(1, 1, 1, 0)
    run(game, 0.1)
    game.set_input(1, 2, 0, 0)
    run(game, 1.0)
    assert (player(game, 1)["x"], player(game, 1)["y"]) == (520.0, 500.0)


def test_a_direction_longer_than_one_is_scaled_to_length_one_and_a_shorter_one_is_not() -> None:
    game, _ = match((100, 100), (500, 500))
    game.set_input(1, 1, 1, 1)
    game.set_input(2, 1, -0.5, 0)
    run(game, 1.0)
    diagonal = 200 / math.sqrt(2)
    assert player(game, 1)["x"] == pytest.approx(100 + diagonal, abs=0.05)
    assert player(game, 1)["y"] == pytest.approx(100 + diagonal, abs=0.05)
    assert player(game, 2)["x"] == pytest.approx(400, abs=0.05)
    assert player(game, 2)["y"] == 500


@pytest.mark.parametrize(("dx", "dy", "expected"), [
    (-1, 0, (0.0, 500.0)), (1, 0, (1000.0, 500.0)), (0, -1, (500.0, 0.0)), (0, 1, (500.0, 1000.0)),
])
def test_movement_is_clamped_at_every_wall(dx: float, dy: float, expected: tuple[float, float]) -> None:
    game, _ = match((500, 500))
    game.set_input(1, 1, dx, dy)
    run(game, 3.0)
    assert (player(game, 1)["x"], player(game, 1)["y"]) == expected


def test_movement_along_a_wall_keeps_sliding_along_it() -> None:
    game, _ = match((990, 500))
    game.set_input(1, 1, 1, 0.5)
    run(game, 1.0)
    me = player(game, 1)
    assert me["x"] == 1000.0
    assert me["y"] == pytest.approx(500 + 100 / math.sqrt(1.25) * 1.0, abs=0.05)


# -- warm-up -------------------------------------------------------------------------------------------


def test_warm_up_moves_players_but_ignores_fire_and_keeps_the_clock_at_zero() -> None:
    game = ArenaGame(random.Random(3))
    game.add_player(1)
    game.add_player(2)
    before = player(game, 1)
    game.set_input(1, 1, 1, 0)
    game.fire(1, 2, 0.0)
    run(game, 0.25)
    assert game.projectiles_state() == []
    assert game.clock_ms == 0
    assert game.end_reason is None
    after = player(game, 1)
    assert after["x"] == pytest.approx(min(1000.0, before["x"] + 50), abs=0.05)
    assert after["seq"] == 2
    assert drained(game) == []


def test_warm_up_never_ends_the_match_on_time_or_on_players_leaving() -> None:
    game = ArenaGame(random.Random(3), ArenaConfig(time_limit_s=1.0))
    for pid in (1, 2, 3):
        game.add_player(pid)
    run(game, 2.0)
    game.remove_player(2)
    game.remove_player(3)
    run(game, 0.1)
    assert game.end_reason is None


def test_start_resets_stats_places_players_apart_and_clears_projectiles() -> None:
    game, _ = match((100, 500), (300, 500), (900, 900), config=ONE_SHOT)
    game.fire(1, 1, 0.0)
    run(game, 0.5)
    game.fire(1, 2, math.pi)
    assert player(game, 1)["k"] == 1 and game.projectiles_state()
    game.start()
    assert game.clock_ms == 0 and game.projectiles_state() == []
    states = game.players_state()
    assert [(s["hp"], s["k"], s["d"], s["sc"], s["alive"]) for s in states] == [(100, 0, 0, 0, True)] * 3
    for a in states:
        for b in states:
            if a is not b:
                assert math.hypot(a["x"] - b["x"], a["y"] - b["y"]) >= 100


# -- firing and projectiles ----------------------------------------------------------------------------------


def test_a_projectile_starts_at_the_shooter_and_flies_at_600_units_per_second_along_the_angle() -> None:
    game, _ = match((500, 100))
    game.fire(1, 1, math.pi / 2)
    (shot,) = game.projectiles_state()
    assert shot == {"id": 1, "p": 1, "x": 500.0, "y": 100.0, "vx": 0.0, "vy": 600.0}
    run(game, 0.5)
    (shot,) = game.projectiles_state()
    assert shot["x"] == 500.0 and shot["y"] == pytest.approx(400, abs=0.05)


@pytest.mark.parametrize(("angle", "velocity"), [(-math.pi, (-600.0, 0.0)), (1.5 * math.pi, (0.0, -600.0))])
def test_projectile_velocity_is_never_negative_zero_on_the_wire(angle: float, velocity: tuple[float, float]) -> None:
    game, _ = match((500, 500))
    game.fire(1, 1, angle)  # sin(-pi) and cos(3pi/2) are tiny negative numbers
    (shot,) = game.projectiles_state()
    assert (shot["vx"], shot["vy"]) == velocity
    assert [math.copysign(1, shot["vx"]), math.copysign(1, shot["vy"])] == [math.copysign(1, v) for v in velocity]


def test_fire_is_limited_to_one_projectile_per_250_ms() -> None:
    game, _ = match((500, 500))
    game.fire(1, 1, 0.0)
    game.fire(1, 2, 1.0)
    run(game, 0.24)
    game.fire(1, 3, 2.0)
    assert [shot["id"] for shot in game.projectiles_state()] == [1]
    assert player(game, 1)["seq"] == 3  # dropped requests still count as applied
    run(game, 0.01)
    game.fire(1, 4, 3.0)
    assert [shot["id"] for shot in game.projectiles_state()] == [1, 2]


def test_a_projectile_lives_one_second() -> None:
    game, _ = match((100, 500))
    game.fire(1, 1, 0.0)
    run(game, 0.99)
    assert len(game.projectiles_state()) == 1
    run(game, 0.01)
    assert game.projectiles_state() == []


def test_a_projectile_leaving_the_arena_vanishes() -> None:
    game, _ = match((900, 500))
    game.fire(1, 1, 0.0)
    run(game, 0.16)
    assert game.projectiles_state()[0]["x"] == pytest.approx(996, abs=0.05)
    run(game, 0.01)
    assert game.projectiles_state() == []


def test_a_hit_deals_10_damage_removes_the_projectile_and_scores_10_for_the_shooter() -> None:
    game, _ = match((100, 500), (310, 500))
    game.fire(1, 1, 0.0)
    run(game, 0.3)
    assert player(game, 2)["hp"] == 100 and drained(game) == []
    run(game, 0.03)
    assert drained(game) == [{"kind": "hit", "p": 1, "target": 2, "hp": 90}]
    assert player(game, 2)["hp"] == 90
    assert player(game, 1)["sc"] == 10
    assert game.projectiles_state() == []
    assert drained(game) == []  # drained once


@pytest.mark.parametrize("angle", [0.0, math.pi / 2, math.pi, -math.pi / 2, 0.7, 2.5, -2.2])
def test_a_projectile_hits_coming_from_any_direction(angle: float) -> None:
    target = (500 + 219 * math.cos(angle), 500 + 219 * math.sin(angle))
    game, _ = match((500, 500), target)
    game.fire(1, 1, angle)
    run(game, 0.35)
    assert drained(game) == [{"kind": "hit", "p": 1, "target": 2, "hp": 90}]


def test_a_projectile_passes_players_outside_the_hit_radius() -> None:
    game, _ = match((100, 500), (400, 521))
    game.fire(1, 1, 0.0)
    run(game, 0.8)
    assert player(game, 2)["hp"] == 100
    assert game.projectiles_state()[0]["x"] > 500


def test_a_projectile_never_hits_its_owner() -> None:
    game, _ = match((100, 500), (800, 800))
    game.set_input(1, 1, 1, 0)  # the shooter runs along with its own shot
    game.fire(1, 2, 0.0)
    run(game, 0.05)
    assert player(game, 1)["hp"] == 100
    assert len(game.projectiles_state()) == 1
    game.set_input(1, 3, -1, 0)
    game.fire(1, 4, math.pi)  # and into one fired backwards
    run(game, 0.3)
    assert player(game, 1)["hp"] == 100 and drained(game) == []


# -- kills, death and respawn --------------------------------------------------------------------------------


def test_a_lethal_hit_gives_a_kill_to_the_shooter_and_a_death_to_the_target() -> None:
    game, _ = match((100, 500), (300, 500), (900, 900), config=ArenaConfig(damage=30))
    for seq in range(4):
        game.fire(1, seq + 1, 0.0)
        run(game, 0.25)
    run(game, 0.2)
    assert drained(game) == [
        {"kind": "hit", "p": 1, "target": 2, "hp": 70}, {"kind": "hit", "p": 1, "target": 2, "hp": 40},
        {"kind": "hit", "p": 1, "target": 2, "hp": 10}, {"kind": "hit", "p": 1, "target": 2, "hp": 0},
        {"kind": "kill", "p": 1, "target": 2},
    ]
    shooter, target = player(game, 1), player(game, 2)
    assert (shooter["k"], shooter["d"], shooter["sc"]) == (1, 0, 4 * 10 + 100)
    assert (target["k"], target["d"], target["hp"], target["alive"]) == (0, 1, 0, False)


def test_a_dead_player_cannot_move_fire_or_be_hit() -> None:
    game, _ = match((100, 500), (300, 500), (900, 900), config=ONE_SHOT)
    game.fire(1, 1, 0.0)
    run(game, 0.25)
    game.fire(1, 2, 0.0)  # a second shot, already in flight when the first one kills
    run(game, 0.1)
    assert kinds(drained(game)) == ["hit", "kill"]
    game.set_input(2, 5, 0, 1)
    game.fire(2, 6, math.pi)
    run(game, 0.5)
    corpse = player(game, 2)
    assert (corpse["x"], corpse["y"], corpse["seq"], corpse["alive"]) == (300.0, 500.0, 6, False)
    assert [shot["p"] for shot in game.projectiles_state()] == [1]
    assert game.projectiles_state()[0]["x"] > 400  # went through the body
    assert drained(game) == []
    assert player(game, 1)["k"] == 1 and corpse["d"] == 1


def test_two_shots_arriving_in_the_same_tick_kill_once_and_the_second_flies_on() -> None:
    game, _ = match((100, 500), (310, 500), (520, 500), config=ONE_SHOT)
    game.fire(1, 1, 0.0)
    game.fire(3, 1, math.pi)
    run(game, 0.32)
    assert drained(game) == [{"kind": "hit", "p": 1, "target": 2, "hp": 0}, {"kind": "kill", "p": 1, "target": 2}]
    assert [shot["p"] for shot in game.projectiles_state()] == [3]
    assert player(game, 3)["sc"] == 0


def test_a_dead_player_respawns_after_exactly_two_seconds_with_full_hp_at_a_free_spot() -> None:
    game, rng = match((100, 500), (300, 500), (900, 900), config=ONE_SHOT)
    game.fire(1, 1, 0.0)
    run(game, 0.3)
    assert kinds(drained(game)) == ["hit", "kill"]
    game.set_input(2, 2, 1, 0)  # held while dead, it moves the player again once back
    # Two spots too close to the living players, then a free one.
    rng.queue_spots((150, 520), (880, 950), (600, 200))
    run(game, 1.99)
    assert not player(game, 2)["alive"] and drained(game) == []
    run(game, 0.01)
    assert drained(game) == [{"kind": "respawn", "p": 2, "x": 600.0, "y": 200.0}]
    back = player(game, 2)
    assert (back["x"], back["y"], back["hp"], back["alive"]) == (600.0, 200.0, 100, True)
    run(game, 0.1)
    assert player(game, 2)["x"] == pytest.approx(620, abs=0.05)


def test_respawn_falls_back_to_the_spot_farthest_from_everyone_when_none_is_free() -> None:
    config = ArenaConfig(damage=100, spawn_attempts=3)
    game, rng = match((100, 500), (300, 500), (900, 900), config=config)
    game.fire(1, 1, 0.0)
    run(game, 0.3)
    rng.queue_spots((120, 500), (100, 560), (850, 900))  # 20, 60 and 50 from the nearest living player
    run(game, 2.0)
    assert player(game, 2)["alive"]
    assert (player(game, 2)["x"], player(game, 2)["y"]) == (100.0, 560.0)


# -- end of the match ----------------------------------------------------------------------------------


def test_the_match_ends_when_a_player_reaches_10_kills_and_then_stands_still() -> None:
    game, rng = match((100, 500), (300, 500), config=ONE_SHOT)
    game.set_input(2, 1, 0, 0)
    for kill in range(1, 11):
        rng.queue_spots((300, 500))  # the victim always comes back to the same place
        game.fire(1, kill, 0.0)
        run(game, 0.3)
        assert player(game, 1)["k"] == kill
        if kill < 10:
            assert game.end_reason is None
            run(game, 2.0)
    assert game.end_reason == "kills"
    game.set_input(1, 99, 1, 0)
    frozen = (game.clock_ms, game.players_state(), game.projectiles_state())
    run(game, 1.0)
    assert (game.clock_ms, game.players_state(), game.projectiles_state()) == frozen
    assert drained(game)[-1] == {"kind": "kill", "p": 1, "target": 2}
    assert game.ranking()[0] == RankEntry(pid=1, rank=1, kills=10, deaths=0, score=10 * 110)


def test_no_one_scores_after_the_deciding_kill_in_the_same_tick() -> None:
    config = ArenaConfig(damage=100, kill_target=1)
    game, _ = match((100, 500), (300, 500), (100, 800), (300, 800), config=config)
    game.fire(1, 1, 0.0)  # fired first, so resolved first
    game.fire(3, 1, 0.0)  # would kill player 4 in the same tick
    run(game, 0.3)
    assert game.end_reason == "kills"
    assert drained(game) == [{"kind": "hit", "p": 1, "target": 2, "hp": 0}, {"kind": "kill", "p": 1, "target": 2}]
    assert [(entry.pid, entry.rank) for entry in game.ranking()] == [(1, 1), (3, 2), (4, 2), (2, 4)]


def test_the_match_ends_after_the_default_time_limit_of_180_seconds() -> None:
    game, _ = match((100, 100), (900, 900))
    run(game, 179.985, dt=0.015)
    assert game.end_reason is None and game.clock_ms == 179_985
    game.step(0.015)
    assert game.end_reason == "time" and game.clock_ms == 180_000
    game.step(0.015)
    assert game.clock_ms == 180_000


def test_the_match_ends_when_one_player_still_holds_a_seat_and_that_player_ranks_first() -> None:
    game, _ = match((100, 500), (300, 500), (900, 900), config=ONE_SHOT)
    game.fire(1, 1, 0.0)
    run(game, 0.3)
    game.remove_player(1)
    game.remove_player(3)
    assert game.end_reason is None  # away, inside their reconnect grace: they still hold their seats
    game.release_seat(1)
    assert game.end_reason is None
    game.release_seat(3)
    assert game.end_reason == "last_player"
    assert game.ranking() == [
        RankEntry(pid=2, rank=1, kills=0, deaths=1, score=0),
        RankEntry(pid=1, rank=2, kills=1, deaths=0, score=110),
        RankEntry(pid=3, rank=3, kills=0, deaths=0, score=0),
    ]
    clock = game.clock_ms
    run(game, 1.0)
    assert game.clock_ms == clock


def test_players_merely_away_never_make_anyone_the_last_player_and_may_come_back() -> None:
    game, _ = match((100, 100), (500, 500), (900, 900), (100, 900))
    for pid in (1, 2, 3):
        game.remove_player(pid)
    run(game, 1.0)
    assert game.end_reason is None and [entry["p"] for entry in game.players_state()] == [4]
    for pid in (1, 2, 3):
        game.add_player(pid)
    assert game.end_reason is None and len(game.players_state()) == 4


def test_the_only_seat_holder_away_when_the_others_give_up_wins_once_back() -> None:
    game, _ = match((100, 100), (500, 500), (900, 900))
    game.remove_player(2)
    game.release_seat(1)
    game.release_seat(3)
    assert game.end_reason is None  # player 2 holds the last seat but is not here to win it yet
    game.add_player(2)
    assert game.end_reason == "last_player" and game.ranking()[0].pid == 2


# -- ranking and players ---------------------------------------------------------------------------------------


def test_ranking_is_by_kills_then_deaths_with_ties_sharing_a_rank_and_left_players_included() -> None:
    game, _ = match((100, 100), (100, 700), (300, 100), (300, 700), (900, 400), config=ONE_SHOT)
    game.fire(1, 1, 0.0)
    game.fire(2, 1, 0.0)
    run(game, 0.3)
    game.remove_player(3)
    assert game.end_reason is None
    assert game.ranking() == [
        RankEntry(pid=1, rank=1, kills=1, deaths=0, score=110),
        RankEntry(pid=2, rank=1, kills=1, deaths=0, score=110),
        RankEntry(pid=5, rank=3, kills=0, deaths=0, score=0),
        RankEntry(pid=3, rank=4, kills=0, deaths=1, score=0),
        RankEntry(pid=4, rank=4, kills=0, deaths=1, score=0),
    ]


def test_players_who_left_before_the_match_began_are_not_ranked() -> None:
    rng = ScriptedRandom()
    game = ArenaGame(rng)
    for pid in (1, 2, 3):
        game.add_player(pid)
    game.remove_player(2)
    game.start()
    assert [entry.pid for entry in game.ranking()] == [1, 3]
    assert [entry["p"] for entry in game.players_state()] == [1, 3]


def test_a_player_who_left_before_the_match_began_and_returns_gets_a_fresh_spot_and_is_ranked() -> None:
    rng = ScriptedRandom()
    game = ArenaGame(rng)
    rng.queue_spots((900, 900), (100, 100), (500, 900))
    for pid in (1, 2, 3):
        game.add_player(pid)
    game.remove_player(2)
    rng.queue_spots((100, 900), (900, 100))
    game.start()
    rng.queue_spots((500, 500))
    game.add_player(2)
    assert (player(game, 2)["x"], player(game, 2)["y"]) == (500.0, 500.0)
    assert [entry.pid for entry in game.ranking()] == [1, 2, 3]


def test_state_reports_the_highest_applied_seq_of_input_and_fire() -> None:
    game, _ = match((100, 100), (900, 900))
    assert player(game, 1)["seq"] == 0
    game.set_input(1, 5, 1, 0)
    assert player(game, 1)["seq"] == 5
    game.fire(1, 7, 0.0)
    assert player(game, 1)["seq"] == 7
    game.set_input(1, 6, 0, 1)  # an older input still applies, but does not lower the seq
    run(game, 0.1)
    assert player(game, 1)["seq"] == 7
    assert player(game, 1)["y"] == pytest.approx(120, abs=0.05)
    assert player(game, 2)["seq"] == 0


def test_state_lists_active_players_with_exact_keys_and_one_decimal() -> None:
    game, _ = match((123.456, 789.04), (500, 500), (900, 100))
    game.fire(1, 3, 0.3)
    game.remove_player(2)
    assert game.players_state() == [
        {"p": 1, "x": 123.5, "y": 789.0, "hp": 100, "k": 0, "d": 0, "sc": 0, "seq": 3, "alive": True},
        {"p": 3, "x": 900.0, "y": 100.0, "hp": 100, "k": 0, "d": 0, "sc": 0, "seq": 0, "alive": True},
    ]
    assert game.projectiles_state() == [
        {"id": 1, "p": 1, "x": 123.5, "y": 789.0, "vx": round(600 * math.cos(0.3), 1),
         "vy": round(600 * math.sin(0.3), 1)},
    ]


def test_a_leaving_players_projectiles_vanish_and_they_can_no_longer_be_hit() -> None:
    game, _ = match((100, 500), (300, 500), (900, 500), (500, 900))
    game.fire(3, 1, math.pi)
    run(game, 0.1)
    game.fire(1, 1, 0.0)
    game.remove_player(3)
    assert [shot["p"] for shot in game.projectiles_state()] == [1]
    game.remove_player(2)
    run(game, 1.0)
    assert drained(game) == []


def test_re_adding_a_pid_that_left_keeps_their_stats_and_starts_a_new_seq() -> None:
    game, _ = match((100, 500), (300, 500), (900, 900), (500, 100), config=ONE_SHOT)
    game.fire(1, 40, 0.0)
    run(game, 0.3)
    game.remove_player(1)
    game.remove_player(2)
    assert [entry["p"] for entry in game.players_state()] == [3, 4]
    run(game, 2.5)
    game.add_player(1)
    game.add_player(2)
    shooter, victim = player(game, 1), player(game, 2)
    assert (shooter["k"], shooter["d"], shooter["sc"], shooter["seq"]) == (1, 0, 110, 0)
    assert (shooter["x"], shooter["y"]) == (100.0, 500.0)
    assert (victim["k"], victim["d"]) == (0, 1)
    run(game, 0.01)  # the pending respawn happens once they are back
    assert kinds(drained(game)) == ["hit", "kill", "respawn"]
    assert player(game, 2)["alive"] and player(game, 2)["hp"] == 100


def test_adding_an_active_pid_again_changes_nothing() -> None:
    game, _ = match((100, 500), (300, 500))
    game.set_input(1, 3, 1, 0)
    before = game.players_state()
    game.add_player(1)
    assert game.players_state() == before


# -- determinism and configuration -----------------------------------------------------------------------------


def play_scripted(seed: int) -> list[Any]:
    """A long, busy match driven by inputs drawn from its own RNG; returns everything it showed."""
    game = ArenaGame(random.Random(seed), ArenaConfig(damage=25))
    inputs = random.Random(99)
    for pid in range(1, 6):
        game.add_player(pid)
    game.start()
    seen: list[Any] = []
    for tick in range(3000):
        for pid in range(1, 6):
            game.set_input(pid, tick, inputs.uniform(-1, 1), inputs.uniform(-1, 1))
            if inputs.random() < 0.2:
                game.fire(pid, tick, inputs.uniform(-math.pi, math.pi))
        game.step(0.015)
        seen.append((game.clock_ms, game.players_state(), game.projectiles_state(), drained(game)))
    seen.append((game.end_reason, game.ranking()))
    return seen


def test_the_same_seed_and_inputs_give_the_same_match() -> None:
    first = play_scripted(7)
    assert first == play_scripted(7)
    assert any(kinds(events) for *_, events in first[:-1])  # the match had hits, kills and respawns
    assert first != play_scripted(8)  # and the seed does matter


def test_config_rejects_a_bad_setting_by_name() -> None:
    with pytest.raises(ValueError, match="fire_interval_s"):
        ArenaConfig(fire_interval_s=0)
    with pytest.raises(ValueError, match="width"):
        ArenaConfig(width=math.nan)


def test_the_arena_definition_builds_a_game_the_host_drives_through_its_interface() -> None:
    game: Game = DEFINITION.make(GameContext(random.Random(1), time_limit_ms=1000))
    game.join(1, "a", 0)
    game.join(2, "b", 0)
    game.start(0)
    now_ms = 0
    while game.end_reason is None and now_ms < 2000:
        now_ms += 15
        game.advance(now_ms)
    assert game.end_reason == "time" and 1000 <= game.clock_ms <= 1015
    assert [(line.pid, line.rank, dict(line.figures)) for line in game.standings()] == [
        (1, 1, {"kills": 0, "deaths": 0}), (2, 1, {"kills": 0, "deaths": 0})]


def run_game(game: ArenaGame, seconds: float) -> None:
    for _ in range(round(seconds / DT)):
        game.step(DT)
