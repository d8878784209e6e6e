"""The node's one timer for fixed-tick rooms (server/rooms/ticker.py): order, catching up, a failing room, the
batch budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from server.rooms.ticker import Ticker
from tests.serverkit import wait_for


class FakeRoom:
    def __init__(self, name: str, deadline: float, interval: float, log: list[str], *,
                 work: Callable[[], None] | None = None, ticks: int = 1_000_000) -> None:
        self.name = name
        self.deadline = deadline
        self.interval = interval
        self.ticking = False
        self.log = log
        self.work = work
        self.left = ticks
        self.failed = False
        self.ticker: Ticker | None = None

    def tick_due(self) -> None:
        self.log.append(self.name)
        if self.work is not None:
            self.work()
        self.left -= 1
        if self.left <= 0 and self.ticker is not None:
            self.ticker.remove(self)
        self.deadline += self.interval

    def tick_failed(self) -> None:
        self.failed = True


async def test_rooms_tick_at_their_period_the_latest_first() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker(loop, time.monotonic)
    log: list[str] = []
    now = time.monotonic()
    late = FakeRoom("late", now - 0.004, 0.015, log)
    on_time = FakeRoom("on_time", now, 0.015, log)
    ticker.add(on_time)
    ticker.add(late)
    times: list[float] = []
    on_time.work = lambda: times.append(time.monotonic())
    await wait_for(lambda: len(times) >= 8)
    assert log[:2] == ["late", "on_time"]
    # Absolute deadlines: the k-th tick never comes before its deadline (less the ticker's early margin).
    for k, at in enumerate(times):
        assert at >= now + k * 0.015 - 0.001, (k, at - now)
    ticker.close()


async def test_a_room_that_fell_behind_catches_up_at_once_within_the_batch_budget() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker(loop, time.monotonic)
    log: list[str] = []
    now = time.monotonic()
    behind = FakeRoom("behind", now - 0.060, 0.015, log)  # four periods behind
    ticker.add(behind)
    await wait_for(lambda: len(log) >= 5)
    assert time.monotonic() - now < 0.015  # caught up long before its next period
    assert behind.deadline > now
    ticker.close()


async def test_a_room_whose_tick_fails_leaves_and_the_others_tick_on() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker(loop, time.monotonic)
    log: list[str] = []

    def explode() -> None:
        raise RuntimeError("a bug")

    now = time.monotonic()
    broken = FakeRoom("broken", now, 0.015, log, work=explode)
    healthy = FakeRoom("healthy", now, 0.015, log)
    ticker.add(broken)
    ticker.add(healthy)
    await wait_for(lambda: log.count("healthy") >= 4)
    assert log.count("broken") == 1
    assert broken.failed and not broken.ticking
    assert ticker.rooms == 1
    ticker.close()


async def test_a_removed_room_ticks_no_more() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker(loop, time.monotonic)
    log: list[str] = []
    now = time.monotonic()
    short = FakeRoom("short", now, 0.005, log, ticks=3)
    short.ticker = ticker
    keep = FakeRoom("keep", now, 0.005, log)
    ticker.add(short)
    ticker.add(keep)
    await wait_for(lambda: log.count("keep") >= 10)
    assert log.count("short") == 3
    ticker.close()


@pytest.mark.parametrize("rooms", [40])
async def test_a_batch_past_its_budget_lets_the_loop_run_before_the_rest(rooms: int) -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker(loop, time.monotonic, budget_s=0.001)
    log: list[str] = []

    def busy() -> None:
        end = time.perf_counter() + 0.0002
        while time.perf_counter() < end:
            pass

    now = time.monotonic()
    for index in range(rooms):
        ticker.add(FakeRoom(f"r{index}", now, 1.0, log, work=busy))
    between: list[int] = []

    async def watch() -> None:  # runs only when the loop gets a turn
        while len(log) < rooms:
            between.append(len(log))
            await asyncio.sleep(0)

    await asyncio.wait_for(watch(), 5.0)
    assert len(set(log)) == rooms  # every room ticked once
    assert ticker.yielded >= 1
    assert any(0 < seen < rooms for seen in between), between
    ticker.close()
