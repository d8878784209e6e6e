"""One process's share of a bot run: its bots on one event loop, ONE periodic task sending every bot's
inputs, a progress report each second, and a clean stop at the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from array import array
from collections.abc import Callable

from bot.client import BotClient, Group, Phase, Tally
from bot.plan import ProcessPlan
from bot.stats import ProcessResult, Progress, bot_rate
from game.api import BotPolicy
from server.net.auth import mint_token
from server.ops.eventloop import run as run_on_loop
from server.rooms.catalog import installed_games

INPUT_HZ = 30.0
# The input period is cut into slots, each serving its share of the bots, so that sends and the states
# they provoke are spread out instead of arriving in one burst per period.
SLOTS = 4
PROGRESS_EVERY_S = 1.0
CLOSE_GRACE_S = 1.0  # after the deadline, how long the server has to answer our leave with a close
TOKEN_SLACK_S = 3600.0

_PLAYING = Phase.PLAYING
log = logging.getLogger("tickroom.bot")


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def bot_policy(mode: str) -> Callable[[random.Random], BotPolicy]:
    """How bots play `mode`: the installed game's own bot policy."""
    definition = installed_games().get(mode)
    if definition is None or definition.bot is None:
        raise ValueError(f"--mode {mode!r}: no installed game of that name has a bot")
    return definition.bot


class Swarm:
    """Runs one `ProcessPlan` on the running event loop; `report` gets a `Progress` every second."""

    def __init__(self, plan: ProcessPlan, report: Callable[[Progress], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self.report = report
        self.clock = clock
        self.tally = Tally()
        self.stop = asyncio.Event()
        settings = plan.settings
        seed = settings.seed if settings.seed is not None else random.randrange(2**32)
        ttl = settings.duration_s + TOKEN_SLACK_S
        groups: dict[int, Group] = {}
        make_policy = bot_policy(settings.mode)
        self.bots: list[BotClient] = []
        for spec in plan.bots:
            group = groups.get(spec.group)
            if group is None and not settings.lobby:  # with --lobby, the lobby picks the rooms
                group = groups[spec.group] = Group(settings, spec.group)
            token = mint_token(settings.secret, spec.name, player_id=spec.player_id, ttl_s=ttl)
            rng = random.Random(seed * 1_000_003 + spec.index)
            self.bots.append(BotClient(spec, settings.url, token, group, self.tally, rng,
                                       make_policy(random.Random(rng.getrandbits(64))), clock, mode=settings.mode,
                                       encoding=settings.encoding))
        self._acks_reported = 0
        self.lag_ms = array("d")

    async def run(self) -> ProcessResult:
        """Play until the plan's deadline (or SIGINT/SIGTERM), close every connection, and return the samples."""
        cpu_start = cpu_seconds()
        wall_start = self.clock()
        self._handle_signals()
        plan = self.plan
        step = plan.settings.ramp_s / len(self.bots)
        async with asyncio.TaskGroup() as tasks:
            bot_tasks = [tasks.create_task(bot.run(plan.started_at + step * i, self.stop))
                         for i, bot in enumerate(self.bots)]
            helpers = [tasks.create_task(self._send_inputs()), tasks.create_task(self._report_progress())]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, plan.ends_at - self.clock())):
                    await self.stop.wait()
            self.stop.set()
            for task in helpers:
                task.cancel()
            await self._close_all()
            for task in bot_tasks:
                task.cancel()
        return self._result(cpu_seconds() - cpu_start, self.clock() - wall_start)

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not in the main thread (tests), signals stay with their default handlers.
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(sig, self.stop.set)

    async def _close_all(self) -> None:
        for bot in self.bots:
            bot.leave()
        open_ = [bot.disconnected for bot in self.bots if bot.transport is not None and bot.disconnected]
        if open_:
            await asyncio.wait(open_, timeout=CLOSE_GRACE_S)
        stragglers = [bot.disconnected for bot in self.bots if bot.transport is not None and bot.disconnected]
        for bot in self.bots:
            bot.force_close()
        if stragglers:
            await asyncio.wait(stragglers, timeout=0.2)

    async def _send_inputs(self) -> None:
        """Every 1/INPUT_HZ seconds, each playing bot sends one input, slot after slot.

        A slot delayed by a burst of incoming states is served late rather than skipped (its bots
        still send once per period); only a whole period behind are the missed slots dropped, so
        that no bot ever sends two inputs back to back.
        """
        clock = self.clock
        slots = [self.bots[k::SLOTS] for k in range(SLOTS)]
        period = 1.0 / INPUT_HZ / SLOTS
        lag_ms = self.lag_ms
        next_at = clock()
        slot = 0
        while True:
            next_at += period
            delay = next_at - clock()
            if delay < -SLOTS * period:
                next_at = clock()
                delay = 0.0
            await asyncio.sleep(delay)
            lag_ms.append((clock() - next_at) * 1000.0)
            for bot in slots[slot]:
                if bot.phase is _PLAYING:
                    try:
                        bot.act()
                    except Exception as exc:
                        # One bot's failure must not stop every other bot's inputs; count it, say it once.
                        self._failed_act(bot, exc)
            slot = (slot + 1) % SLOTS

    def _failed_act(self, bot: BotClient, exc: Exception) -> None:
        self.tally.errors[f"act_{type(exc).__name__}"] += 1
        if not self.tally.reported_exception:
            self.tally.reported_exception = True
            log.exception("bot %s failed to act", bot.spec.name, exc_info=exc)

    def progress(self) -> Progress:
        acks = self.tally.acks_ms
        fresh = acks[self._acks_reported:]
        self._acks_reported = len(acks)
        return Progress(process=self.plan.process, at=self.clock(),
                        playing=sum(1 for bot in self.bots if bot.phase is _PLAYING),
                        states=sum(bot.states for bot in self.bots), inputs=sum(bot.inputs for bot in self.bots),
                        errors=sum(self.tally.errors.values()),
                        disconnects=self.tally.disconnects, matches=len(self.tally.matches), acks_ms=fresh,
                        matched=self.tally.matched)

    async def _report_progress(self) -> None:
        report = self.report
        if report is None:
            return
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            report(self.progress())

    def _result(self, cpu_s: float, wall_s: float) -> ProcessResult:
        tally = self.tally
        result = ProcessResult(process=self.plan.process, bots=len(self.bots), acks_ms=tally.acks_ms,
                               errors=tally.errors, disconnects=tally.disconnects, reconnects=tally.reconnects,
                               matches=tally.matches, matched=tally.matched, capacity=tally.capacity,
                               rooms=tally.rooms, waits_ms=tally.waits_ms,
                               lag_ms=self.lag_ms, cpu_s=cpu_s, wall_s=wall_s)
        for bot in self.bots:
            rate = bot_rate(bot.states, bot.connected_s, bot.welcomed)
            if rate is not None:
                result.rates.append(rate)
                if bot.welcomed:
                    result.placed_rates.append(rate)
                result.byte_rates.append(bot.received_bytes / bot.connected_s if bot.connected_s > 0 else 0.0)
            result.connected += bot.welcomed
            result.connected_s += bot.connected_s
            result.states += bot.states
            result.inputs += bot.inputs
        return result


def run_process(plan: ProcessPlan, report: Callable[[Progress], None] | None = None) -> ProcessResult:
    """Play one process's share of the run on a fresh event loop, in the calling thread."""
    # picows warns about every write-buffer pause under load; the bot counts what matters itself.
    logging.getLogger("picows").setLevel(logging.ERROR)

    async def main() -> ProcessResult:
        return await Swarm(plan, report).run()

    return run_on_loop(main())
