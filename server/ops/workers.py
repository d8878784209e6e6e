"""How `tickroom serve --workers N` lays out its worker processes (node ids, ports, public URLs), and when its
supervisor starts a dead one again. Plain values and a policy with an injected clock; no processes here.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from dataclasses import dataclass, field

from server.ops.settings import NODE_PLACEHOLDER, PORT_PLACEHOLDER, Settings, SettingsError


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Who one worker is and where it listens: the shared port (the lobby and HTTP, SO_REUSEPORT) and its own,
    which its public URL names, so that a player's /game reaches the worker that hosts the room."""

    index: int
    node_id: str
    shared_port: int
    own_port: int
    # The shared port and every worker's own: a page served by any of them is one of this deployment's own.
    sibling_ports: frozenset[int]

    def settings(self, base: Settings) -> Settings:
        """The worker's settings: the supervisor's, under the worker's node id."""
        return dataclasses.replace(base, node_id=self.node_id)


def worker_count(settings: Settings) -> int:
    """How many workers `tickroom serve` runs: the setting, or one per core this process may use."""
    return settings.workers or len(os.sched_getaffinity(0))


def plan_workers(settings: Settings, count: int) -> list[WorkerSlot]:
    """The slots of `count` workers (more than one) of a node whose port is known (not 0). Worker i is node
    NODE_ID-wI and listens alone on `worker_port` + i (PORT + 1 + i by default)."""
    assert count > 1 and settings.port != 0
    first = settings.worker_port or settings.port + 1
    own = range(first, first + count)
    if own[-1] > 65535:
        raise SettingsError(f"worker_port (TICKROOM_WORKER_PORT): {count} workers listen on ports {first} to "
                            f"{own[-1]}, past 65535; set a lower one, or fewer workers (TICKROOM_WORKERS)")
    if settings.port in own:
        raise SettingsError(f"worker_port (TICKROOM_WORKER_PORT): the workers' own ports {first} to {own[-1]} "
                            f"include the shared port {settings.port} (TICKROOM_PORT)")
    url = settings.public_url
    if url and NODE_PLACEHOLDER not in url and PORT_PLACEHOLDER not in url:
        raise SettingsError(f"public_url (TICKROOM_PUBLIC_URL) is one URL, and each of the {count} workers needs "
                            f"its own: put {NODE_PLACEHOLDER} (the worker's node id) or {PORT_PLACEHOLDER} (its own "
                            f"port) in it, e.g. wss://play.example.org/node/{NODE_PLACEHOLDER}, got {url!r}")
    siblings = frozenset([settings.port, *own])
    return [WorkerSlot(index, f"{settings.node_id}-w{index}", settings.port, port, siblings)
            for index, port in enumerate(own)]


@dataclass
class RestartPolicy:
    """When a worker that died starts again: after a back-off that doubles with each death within `window_s`
    (from `first_delay_s` up to `max_delay_s`); never again once it died `crash_loop_deaths` times within
    `window_s` (a crash loop: something a restart does not fix)."""

    first_delay_s: float = 0.5
    max_delay_s: float = 10.0
    crash_loop_deaths: int = 5
    window_s: float = 60.0
    _deaths: deque[float] = field(default_factory=deque)

    def died(self, now: float) -> float | None:
        """A death at `now` (a monotonic clock): seconds to wait before starting the worker again, or None to
        leave it dead."""
        self._deaths.append(now)
        while self._deaths and self._deaths[0] <= now - self.window_s:
            self._deaths.popleft()
        if len(self._deaths) >= self.crash_loop_deaths:
            return None
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** (len(self._deaths) - 1))

    @property
    def recent_deaths(self) -> int:
        return len(self._deaths)
