"""A node at its capacity takes no new room: the load gauge (fake clocks), the lobby's `capacity` answer when
every node is full, and a full node's refusal of new development rooms."""

from __future__ import annotations

import orjson

from server.rooms.loadgauge import (
    ALLOWANCE_MAX,
    MIN_TICKS,
    PRIOR_ROOM_CPU,
    RESUME_SAMPLES,
    LoadGauge,
    LoadLimits,
)
from tests.serverkit import (
    is_type,
    join_game,
    join_lobby,
    new_token,
    recv_until,
    start_app,
    start_lobby_app,
    wait_for,
)


class FakeTimes:
    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 10.0

    def run(self, seconds: float, cpu_share: float) -> None:
        self.wall += seconds
        self.cpu += seconds * cpu_share


def gauge(limits: LoadLimits) -> tuple[LoadGauge, FakeTimes]:
    times = FakeTimes()
    return LoadGauge(limits, cpu_time=lambda: times.cpu, clock=lambda: times.wall), times


def second(load: LoadGauge, times: FakeTimes, cpu_share: float, ticks: int = 0, late: int = 0, *,
           running: int = 0, starting: int = 0) -> bool:
    times.run(1.0, cpu_share)
    load.ticks += ticks
    load.late += late
    return load.sample(running, starting)


def test_the_node_turns_full_at_its_cpu_limit_and_takes_rooms_again_only_after_calm_seconds_with_headroom() -> None:
    load, times = gauge(LoadLimits(cpu=0.8))
    assert not second(load, times, 0.5) and not load.full
    assert second(load, times, 0.82) and load.full and load.overloaded
    assert round(load.cpu, 6) == 0.82 and load.turned_full == 1
    assert not second(load, times, 0.78) and load.full  # below the limit, within the headroom: still full
    # Below the limit less the headroom: the smoothed CPU must come down too, and stay down RESUME_SAMPLES seconds.
    changes = [second(load, times, 0.5) for _ in range(RESUME_SAMPLES + 3)]
    assert changes.count(True) == 1 and not load.full
    assert changes.index(True) >= RESUME_SAMPLES - 1
    # One quiet second inside a noisy load is not calm enough.
    assert second(load, times, 0.85) and load.full
    assert not second(load, times, 0.5) and load.full
    assert not second(load, times, 0.85) and load.full
    assert not second(load, times, 0.5) and load.full


def test_below_its_limit_the_node_takes_only_the_rooms_its_cost_per_room_says_still_fit() -> None:
    load, times = gauge(LoadLimits(cpu=0.8))
    for _ in range(5):  # settle the smoothed figure at 0.5 of a core for 50 running rooms: 1 % a room
        second(load, times, 0.5, running=50)
    # (0.8 - 0.05 - 0.5) / 0.01 = 25 rooms fit.
    assert load.allowance == 25 and not load.full
    assert not second(load, times, 0.6, running=50) and not load.full
    # Smoothed 0.54 and the last second 0.6: judged on 0.6, so (0.75 - 0.6) / 0.012 = 12 rooms, less 4 starting.
    second(load, times, 0.6, running=50, starting=4)
    assert load.allowance == 8
    placed = [load.room_placed() for _ in range(8)]
    assert placed == [False] * 7 + [True] and load.full and not load.overloaded
    assert not load.room_placed() and load.full and load.allowance == 0
    # The next second measures those rooms: with room to spare, the node takes rooms again.
    assert second(load, times, 0.55, running=58) and not load.full and load.allowance > 0


def test_a_nearly_empty_node_counts_rooms_at_a_prior_cost_and_a_node_near_its_limit_takes_none() -> None:
    load, times = gauge(LoadLimits(cpu=0.8))
    second(load, times, 0.05, running=2)
    assert load.allowance == ALLOWANCE_MAX  # (0.75 - 0.05) / PRIOR_ROOM_CPU = 70 fit: at most ALLOWANCE_MAX a second
    # Rooms placed but not running yet (their matches all start later) count against what fits.
    second(load, times, 0.05, running=2, starting=60)
    assert abs(load.allowance - ((0.8 - 0.05 - 0.05) / PRIOR_ROOM_CPU - 60)) <= 1  # 10, give or take the rounding
    for _ in range(5):
        second(load, times, 0.76, running=76)
    assert load.allowance == 0 and load.full and not load.overloaded


def test_late_ticks_make_a_busy_node_full_but_not_an_idle_one() -> None:
    load, times = gauge(LoadLimits(cpu=0.8, lateness_s=0.010, late_share=0.01))
    # Late ticks on a node with CPU to spare: the machine is busy elsewhere; refusing rooms would not help.
    assert not second(load, times, 0.2, ticks=1000, late=100) and not load.full
    # The node works hard and more than 1 % of its ticks are late: full.
    assert second(load, times, 0.6, ticks=1000, late=20) and load.full
    assert load.late_share == 0.02
    # Still some late ticks: stays full; none for RESUME_SAMPLES seconds: takes rooms again.
    assert not second(load, times, 0.6, ticks=1000, late=5) and load.full
    changes = [second(load, times, 0.6, ticks=1000, late=0) for _ in range(RESUME_SAMPLES)]
    assert changes == [False] * (RESUME_SAMPLES - 1) + [True] and not load.full


def test_too_few_ticks_say_nothing_and_a_limit_of_one_core_is_no_limit() -> None:
    load, times = gauge(LoadLimits(cpu=0.8))
    assert not second(load, times, 0.7, ticks=MIN_TICKS - 1, late=MIN_TICKS - 1) and not load.full
    unlimited, times = gauge(LoadLimits(cpu=1.0))
    assert not second(unlimited, times, 1.0, ticks=1000, late=1000, running=100) and not unlimited.full
    assert not any(unlimited.room_placed() for _ in range(100)) and not unlimited.full


def test_a_lateness_limit_of_zero_counts_no_tick_late() -> None:
    load, _ = gauge(LoadLimits(lateness_s=0))
    assert load.late_after_s == float("inf")


async def test_every_node_full_a_new_player_is_told_capacity_and_may_join_again_once_one_is_not(
        redis_url: str) -> None:
    app = await start_lobby_app(redis_url)
    try:
        node, hub = app.node, app.hub
        assert node is not None and hub is not None
        await wait_for(lambda: bool(hub.upkeep.live))
        node.load.full = True
        assert node.on_load_change is not None
        node.on_load_change()
        await wait_for(lambda: not any(info.accepting for info in hub.upkeep.live))
        ws = await join_lobby(app, new_token("late"))
        error = await recv_until(ws, is_type("error"))
        assert error["code"] == "capacity" and error["retry_ms"] == 5000
        # Not left in line, and the connection stays: the client joins again once a node takes rooms.
        prefix = app.settings.lobby_prefix
        assert await hub.client.zcard(f"{prefix}:{{arena}}:queue") == 0
        # Each further refusal on the connection asks it to wait twice as long (up to 30 s).
        for expected in (10_000, 20_000, 30_000, 30_000):
            await ws.send(orjson.dumps({"type": "join", "v": 1, "mode": "arena"}).decode())
            again = await recv_until(ws, is_type("error"))
            assert (again["code"], again["retry_ms"]) == ("capacity", expected)
        node.load.full = False
        node.on_load_change()
        await wait_for(lambda: any(info.accepting for info in hub.upkeep.live))
        await ws.send(orjson.dumps({"type": "join", "v": 1, "mode": "arena"}).decode())
        status = await recv_until(ws, lambda m: m["type"] in ("lobby", "match_found", "error"))
        assert status["type"] == "lobby", status
        await ws.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_a_full_node_still_seats_new_players_in_open_rooms(redis_url: str) -> None:
    app = await start_lobby_app(redis_url, countdown_s=30.0)
    try:
        node, hub = app.node, app.hub
        assert node is not None and hub is not None
        first = await join_lobby(app, new_token("first"))
        await recv_until(first, is_type("lobby"))
        node.load.full = True
        assert node.on_load_change is not None
        node.on_load_change()
        await wait_for(lambda: not any(info.accepting for info in hub.upkeep.live))
        # A room with a free seat exists: no new room is needed, so no refusal.
        second_ws = await join_lobby(app, new_token("second"))
        status = await recv_until(second_ws, lambda m: m["type"] in ("lobby", "error"))
        assert status["type"] == "lobby" and len(status["players"]) == 2, status
        await first.close()
        await second_ws.close()
    finally:
        await app.__aexit__(None, None, None)


async def test_a_full_node_refuses_new_development_rooms_and_still_seats_players_in_its_own() -> None:
    app = await start_app()
    try:
        assert app.node is not None
        first, welcome = await join_game(app, "room-old", token=new_token())
        assert welcome["type"] == "welcome"
        app.node.load.full = True
        _, refused = await join_game(app, "room-new", token=new_token())
        assert (refused["type"], refused["code"]) == ("error", "server_full")
        second_ws, welcome = await join_game(app, "room-old", token=new_token())
        assert welcome["type"] == "welcome"
        await first.close()
        await second_ws.close()
    finally:
        await app.__aexit__(None, None, None)
