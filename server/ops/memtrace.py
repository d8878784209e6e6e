"""Development aid: trace the node's allocations with `tracemalloc` and write a snapshot on each SIGUSR2, so
that a soak (bench/soak.py) can show what keeps growing by comparing two snapshots."""

from __future__ import annotations

import asyncio
import logging
import signal
import tracemalloc
from pathlib import Path

log = logging.getLogger("tickroom.memtrace")

FRAMES = 8  # stack depth kept per allocation: enough to see past the generic helpers to their caller


class MemoryTracer:
    """Starts tracing at once; `dump()` (or SIGUSR2, once `install` ran) writes `snapshot-N.tracemalloc`."""

    def __init__(self, directory: Path, frames: int = FRAMES) -> None:
        self.directory = directory
        self.count = 0
        directory.mkdir(parents=True, exist_ok=True)
        if not tracemalloc.is_tracing():
            tracemalloc.start(frames)
        log.warning("tracing allocations (development): snapshots go to %s on SIGUSR2", directory)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGUSR2, self.dump)

    def dump(self) -> Path:
        self.count += 1
        path = self.directory / f"snapshot-{self.count}.tracemalloc"
        # Snapshots of tracemalloc's own bookkeeping would only blur the comparison.
        snapshot = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
        snapshot.dump(str(path))
        log.warning("allocation snapshot %d written to %s", self.count, path)
        return path

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_signal_handler(signal.SIGUSR2)
        tracemalloc.stop()
