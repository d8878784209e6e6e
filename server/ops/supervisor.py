"""The supervisor of `tickroom serve --workers N`: starts the embedded Redis and Postgres once (when none is
configured), runs N worker processes (`python -m server.worker INDEX`, each a node of its own), starts one that
died again (`RestartPolicy`), and on SIGTERM or SIGINT stops them all, then itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

from server.ops.embedded import die_with_parent
from server.ops.services import connect_services
from server.ops.settings import Settings
from server.ops.workers import RestartPolicy, WorkerSlot

log = logging.getLogger("tickroom.supervisor")

# A worker stops in well under this (snapshots, deregistration, queued writes: about 15 s at worst); compose
# gives the container 30 s (stop_grace_period) before it kills everything.
STOP_TIMEOUT_S = 25.0


def worker_command(slot: WorkerSlot) -> list[str]:
    """The command line of a worker: this Python, the worker module, its index (its settings come in its
    environment)."""
    return [sys.executable, "-m", "server.worker", str(slot.index)]


class Supervisor:
    """`await Supervisor(settings, slots).run()`: 0 once stopped by a signal, 1 when every worker was left dead
    after a crash loop."""

    def __init__(self, settings: Settings, slots: list[WorkerSlot], *,
                 command: Callable[[WorkerSlot], list[str]] = worker_command,
                 restart_policy: Callable[[], RestartPolicy] = RestartPolicy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.slots = slots
        self.command = command
        self.restart_policy = restart_policy
        self.clock = clock
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._stop = asyncio.Event()
        self._given_up: set[int] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        async with AsyncExitStack() as stack:
            # Started (and migrated) once for all the workers; stopped last, after every worker is gone.
            settings = await connect_services(self.settings, stack)
            environment = {**os.environ, **settings.as_environment()}
            log.info("running %d workers (%s) sharing port %d", len(self.slots),
                     ", ".join(slot.node_id for slot in self.slots), settings.port)
            async with asyncio.TaskGroup() as tasks:
                keepers = [tasks.create_task(self._keep(slot, environment), name=f"worker-{slot.node_id}")
                           for slot in self.slots]
                await self._stop.wait()
                if len(self._given_up) < len(self.slots):
                    live = sum(process.returncode is None for process in self.processes.values())
                    log.info("signal received: stopping %d workers", live)
                await self._stop_workers(keepers)
        if len(self._given_up) == len(self.slots):
            log.error("every worker was left dead after crashing again and again: the supervisor stops")
            return 1
        return 0

    async def _keep(self, slot: WorkerSlot, environment: dict[str, str]) -> None:
        """Run the worker of `slot` until the supervisor stops: again after each death, unless it crash-loops."""
        policy = self.restart_policy()
        while not self._stop.is_set():
            process = await self._start(slot, environment)
            code = await process.wait()
            if self._stop.is_set():
                return
            delay = policy.died(self.clock())
            if delay is None:
                log.error("worker %s exited with %s, %d deaths within %g s: a crash loop, so it is left dead "
                          "(the other nodes take its rooms)", slot.node_id, _exit(code), policy.recent_deaths,
                          policy.window_s)
                self._given_up.add(slot.index)
                if len(self._given_up) == len(self.slots):
                    self._stop.set()
                return
            log.warning("worker %s (pid %d) exited with %s: starting it again in %g s", slot.node_id, process.pid,
                        _exit(code), delay)
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            except TimeoutError:
                pass

    async def _start(self, slot: WorkerSlot, environment: dict[str, str]) -> asyncio.subprocess.Process:
        # Its own session: a terminal's Ctrl-C reaches the supervisor only, which stops the workers itself. Should
        # the supervisor be killed, each worker is sent SIGTERM and stops as after a signal.
        process = await asyncio.create_subprocess_exec(
            *self.command(slot), env=environment, stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM))
        self.processes[slot.index] = process
        if self._stop.is_set():  # the signal came while it was starting: it missed the others' SIGTERM
            process.send_signal(signal.SIGTERM)
        log.info("worker %s started (pid %d; its own port %d)", slot.node_id, process.pid, slot.own_port)
        return process

    async def _stop_workers(self, keepers: list[asyncio.Task[None]]) -> None:
        """SIGTERM to every worker (each stops as `tickroom serve` does), and SIGKILL to one still there after
        STOP_TIMEOUT_S."""
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        _, pending = await asyncio.wait(keepers, timeout=STOP_TIMEOUT_S)
        if pending:
            for index, process in self.processes.items():
                if process.returncode is None:
                    log.error("worker %s did not stop within %g s: killed", self.slots[index].node_id,
                              STOP_TIMEOUT_S)
                    process.kill()
            await asyncio.wait(pending)


def _exit(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
