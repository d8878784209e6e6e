"""Whether this node can take another room: its CPU and the lateness of its ticks over the last second.

A node past its capacity makes every room late (each room's missed ticks pile up on the others'), so it takes
no new room once it works near its limit: the lobby places rooms elsewhere, or tells players that every node is
full (`capacity`). The rooms it has keep ticking on time. Sampled once a second; `full` changes only on a
sample, and goes back to False only with some headroom (hysteresis), so that the node does not flap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# A node that stopped taking rooms because of its load takes them again below these.
CPU_HEADROOM = 0.05
LATE_SHARE_RESUME = 0.002
# Lateness is only judged over enough ticks to mean something, and only while the node itself works hard: late
# ticks on a node with CPU to spare come from elsewhere (a machine shared with busier processes), and refusing
# rooms would not make them on time.
MIN_TICKS = 50
LATE_NEEDS_CPU = 0.6  # of the CPU limit


@dataclass(frozen=True, slots=True)
class LoadLimits:
    cpu: float = 0.7  # share of one core the node may use and still take new rooms (1.0: no limit at all)
    lateness_s: float = 0.010  # a tick this late counts as late (0: none does),
    late_share: float = 0.01  # and more than this share of late ticks in a second means overloaded


class LoadGauge:
    def __init__(self, limits: LoadLimits, cpu_time: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.late_after_s = limits.lateness_s if limits.lateness_s > 0 else float("inf")
        self._cpu_time = cpu_time
        self._clock = clock
        self._at = clock()
        self._cpu_at = cpu_time()
        self.ticks = 0  # fixed-room ticks since the last sample (counted by the runners),
        self.late = 0  # and how many of them were later than `lateness_s`
        self.cpu = 0.0  # share of a core used over the last sample
        self.late_share = 0.0
        self.full = False
        self.turned_full = 0  # times the node stopped taking rooms for its load

    def sample(self) -> bool:
        """Read the last interval's figures; True when `full` changed."""
        now, cpu_now = self._clock(), self._cpu_time()
        elapsed = now - self._at
        if elapsed <= 0:
            return False
        self.cpu = (cpu_now - self._cpu_at) / elapsed
        self.late_share = self.late / self.ticks if self.ticks >= MIN_TICKS else 0.0
        self._at, self._cpu_at = now, cpu_now
        self.ticks = self.late = 0
        limits = self.limits
        if limits.cpu >= 1.0:
            return False  # no limit
        working = self.cpu >= LATE_NEEDS_CPU * limits.cpu
        if self.full:
            full = self.cpu >= limits.cpu - CPU_HEADROOM or (working and self.late_share > LATE_SHARE_RESUME)
        else:
            full = self.cpu >= limits.cpu or (working and self.late_share > limits.late_share)
        if full == self.full:
            return False
        self.full = full
        self.turned_full += full
        return True
