"""Whether this node can take another room: its CPU and the lateness of its ticks, sampled each second.

A node past its capacity makes every room late (each room's missed ticks pile up on the others'), so it takes
no new room once it works near its limit: the lobby places rooms elsewhere, or tells players that every node is
full (`capacity`). The rooms it has keep ticking on time.

Three rules keep it from overshooting, each measured with `bench.overload`:
- **Overloaded** (CPU over the limit, or too many late ticks while the node works hard) sets in on one sample,
  and ends only after `RESUME_SAMPLES` calm seconds in a row, with headroom (hysteresis): one quiet second in a
  noisy load must not open the doors to every player waiting.
- **An allowance of rooms**: below its limit the node takes only as many new rooms as its measured cost per
  running room (PRIOR_ROOM_CPU until a few run) says still fit under the limit less the headroom, minus the rooms
  it has that are not running yet (they cost little until their match starts, then all at once), at most
  ALLOWANCE_MAX a second. Each room placed here spends one; with none left the node is full until the next
  sample measures what those rooms cost.
- The CPU it judges is the larger of the last second's and a smoothed figure (a few seconds' memory), so that a
  burst is seen at once and a dip is not trusted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# A node that stopped taking rooms because of its load takes them again below these, for RESUME_SAMPLES seconds.
CPU_HEADROOM = 0.05
LATE_SHARE_RESUME = 0.002
RESUME_SAMPLES = 3
# Lateness is only judged over enough ticks to mean something, and only while the node itself works hard: late
# ticks on a node with CPU to spare come from elsewhere (a machine shared with busier processes), and refusing
# rooms would not make them on time.
MIN_TICKS = 50
LATE_NEEDS_CPU = 0.6  # of the CPU limit
# The smoothed CPU: each sample moves it this share of the way to the last second's figure.
SMOOTHING = 0.4
# Below this many running rooms the cost of one is not measured (the node's own work would dominate): a room is
# then taken to cost PRIOR_ROOM_CPU (a busy arena room costs 0.4-0.6 % of a core here, docs/benchmarks.md).
ESTIMATE_FROM_ROOMS = 5
PRIOR_ROOM_CPU = 0.01
ALLOWANCE_MAX = 32  # rooms a second, whatever the estimate says


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
        self.cpu_smoothed: float | None = None
        self.late_share = 0.0
        self.overloaded = False
        self.allowance = ALLOWANCE_MAX  # new rooms the node may still take before the next sample
        self.full = False  # overloaded, or no allowance left: what the lobby is told
        self.turned_full = 0  # times the node stopped taking rooms for its load
        self._calm = 0  # calm samples in a row while overloaded

    @property
    def limited(self) -> bool:
        return self.limits.cpu < 1.0

    def sample(self, running: int = 0, starting: int = 0) -> bool:
        """Read the last interval's figures, given the rooms the node runs and those whose match has not
        started yet; True when `full` changed."""
        now, cpu_now = self._clock(), self._cpu_time()
        elapsed = now - self._at
        if elapsed <= 0:
            return False
        self.cpu = (cpu_now - self._cpu_at) / elapsed
        smoothed = self.cpu_smoothed
        self.cpu_smoothed = self.cpu if smoothed is None else smoothed + SMOOTHING * (self.cpu - smoothed)
        self.late_share = self.late / self.ticks if self.ticks >= MIN_TICKS else 0.0
        self._at, self._cpu_at = now, cpu_now
        self.ticks = self.late = 0
        if not self.limited:
            return False  # no limit
        limits = self.limits
        cpu = max(self.cpu, self.cpu_smoothed)
        working = cpu >= LATE_NEEDS_CPU * limits.cpu
        if self.overloaded:
            calm = cpu < limits.cpu - CPU_HEADROOM and not (working and self.late_share > LATE_SHARE_RESUME)
            self._calm = self._calm + 1 if calm else 0
            self.overloaded = self._calm < RESUME_SAMPLES
        else:
            self.overloaded = self.cpu >= limits.cpu or (working and self.late_share > limits.late_share)
            self._calm = 0
        if self.overloaded:
            self.allowance = 0
        else:
            # The node's own work counted in the cost of a room: an estimate on the safe side.
            per_room = cpu / running if running >= ESTIMATE_FROM_ROOMS else PRIOR_ROOM_CPU
            fits = math.floor((limits.cpu - CPU_HEADROOM - cpu) / per_room) - starting
            self.allowance = max(0, min(ALLOWANCE_MAX, fits))
        return self._judge()

    def room_placed(self) -> bool:
        """A new room was placed on this node: it spends one of the allowance; True when `full` changed."""
        if not self.limited:
            return False
        self.allowance = max(0, self.allowance - 1)
        return self._judge()

    def _judge(self) -> bool:
        full = self.overloaded or self.allowance <= 0
        if full == self.full:
            return False
        self.full = full
        self.turned_full += full
        return True
