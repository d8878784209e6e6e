"""The node's numbers for Prometheus (`GET /metrics`, prometheus-client's text format).

What changes on the tick path is counted in plain integers and a histogram that costs one bisect per sample
(prometheus-client's own takes a lock each time); everything else is read from the node when scraped. Each
app has its own registry: no global state.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

ROOM_STATES = ("waiting", "countdown", "running", "finished")
# Seconds: tick work and lateness live around the 15 ms period; waits and snapshot rounds are longer.
# 30 ms: the lateness a room may show on a node at its capacity (bench/overload.py judges p99 by it).
TICK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.010, 0.015, 0.025, 0.030, 0.050, 0.100, 0.250, 1.0)
WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
GC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.010, 0.025, 0.050, 0.100, 0.250)
ROUND_BUCKETS = (0.001, 0.005, 0.010, 0.025, 0.050, 0.100, 0.250, 0.5, 1, 2.5)


class FastHistogram:
    """Cumulative bucket counts and a sum, fed from one thread (the event loop)."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def _buckets(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*(repr(float(b)) for b in self._bounds), "+Inf"), self._counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        return HistogramMetricFamily(name, documentation, buckets=self._buckets(), sum_value=self._sum)

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        family.add_metric(labels, self._buckets(), self._sum)


class GcPauses:
    """How long each run of Python's cyclic garbage collector held the process (and so every room's tick), by
    generation: a full (generation 2) collection scans every tracked object the rooms and sessions made."""

    __slots__ = ("_started", "by_generation")

    def __init__(self) -> None:
        self.by_generation = tuple(FastHistogram(GC_BUCKETS) for _ in range(3))
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.by_generation[info["generation"]].observe(time.perf_counter() - self._started)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily("tickroom_gc_pause_seconds", "How long each garbage collection held the "
                                       "process, by generation (2: a full collection)", labels=["generation"])
        for generation, histogram in enumerate(self.by_generation):
            histogram.add_to(family, [str(generation)])
        return family


@dataclass(slots=True)
class Traffic:
    """WebSocket messages and bytes through the node, counted where they pass."""

    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # `error` messages and refusals, by code


@dataclass(slots=True)
class NodeMetrics:
    """What the node counts as it goes (the rest is read at scrape time)."""

    traffic: Traffic = field(default_factory=Traffic)
    tick_duration: FastHistogram = field(default_factory=lambda: FastHistogram(TICK_BUCKETS))
    tick_lateness: FastHistogram = field(default_factory=lambda: FastHistogram(TICK_BUCKETS))
    lobby_wait: FastHistogram = field(default_factory=lambda: FastHistogram(WAIT_BUCKETS))
    snapshot_round: FastHistogram = field(default_factory=lambda: FastHistogram(ROUND_BUCKETS))
    gc_pauses: GcPauses = field(default_factory=GcPauses)
    matches_started: int = 0
    matches_ended: Counter[str] = field(default_factory=Counter)  # by reason
    reconnects: int = 0
    backend_errors: Counter[str] = field(default_factory=Counter)  # redis, postgres


@dataclass(frozen=True, slots=True)
class Reading:
    """What the node is at scrape time (gathered by the app, some of it from Redis)."""

    rooms_by_state: dict[str, int]
    players_connected: int
    lobby_waiting: int
    lobby_queue: dict[str, int]  # mode -> players in the queue
    write_queue_depth: int
    write_retries: int
    writes: int
    draining: bool
    accepting: bool = True  # takes new rooms (not draining, below its room and load limits)
    cpu_share: float = 0.0  # of one core, over the last second (server/rooms/loadgauge.py)
    live_messages_out: int = 0  # what the rooms still running broadcast (the closed ones are in Traffic)
    live_bytes_out: int = 0


class NodeCollector:
    """A prometheus-client collector over a node's `NodeMetrics` and its latest `Reading`."""

    def __init__(self, node_id: str, metrics: NodeMetrics, read: Callable[[], Reading]) -> None:
        self.node_id = node_id
        self.metrics = metrics
        self._read = read

    def collect(self) -> Iterator[Metric]:
        m, reading = self.metrics, self._read()
        traffic = m.traffic
        rooms = GaugeMetricFamily("tickroom_rooms", "Rooms on this node by state", labels=["state"])
        for state in ROOM_STATES:
            rooms.add_metric([state], reading.rooms_by_state.get(state, 0))
        yield rooms
        yield GaugeMetricFamily("tickroom_players_connected", "Players with a game connection to this node",
                                value=reading.players_connected)
        yield GaugeMetricFamily("tickroom_lobby_waiting", "Lobby connections open on this node",
                                value=reading.lobby_waiting)
        queue = GaugeMetricFamily("tickroom_lobby_queue_length", "Players waiting in the lobby (all nodes)",
                                  labels=["mode"])
        for mode, length in sorted(reading.lobby_queue.items()):
            queue.add_metric([mode], length)
        yield queue
        yield m.lobby_wait.family("tickroom_lobby_wait_seconds", "From joining the lobby to match_found")
        yield m.tick_duration.family("tickroom_tick_duration_seconds", "Work of one room tick")
        yield m.tick_lateness.family("tickroom_tick_lateness_seconds", "How late a room tick started")
        for direction, messages, size in (
                ("in", traffic.messages_in, traffic.bytes_in),
                ("out", traffic.messages_out + reading.live_messages_out, traffic.bytes_out + reading.live_bytes_out)):
            yield _counter("tickroom_messages", "WebSocket messages", {"direction": direction}, messages)
            yield _counter("tickroom_bytes", "WebSocket payload bytes", {"direction": direction}, size)
        errors = CounterMetricFamily("tickroom_errors", "Errors sent to clients (and refused handshakes) by code",
                                     labels=["code"])
        for code, count in sorted(traffic.errors.items()):
            errors.add_metric([code], count)
        yield errors
        yield _counter("tickroom_matches_started", "Matches started on this node", {}, m.matches_started)
        ended = CounterMetricFamily("tickroom_matches_ended", "Matches ended on this node by reason",
                                    labels=["reason"])
        for reason, count in sorted(m.matches_ended.items()):
            ended.add_metric([reason], count)
        yield ended
        yield m.snapshot_round.family("tickroom_snapshot_round_seconds",
                                      "One round of room snapshots written to Redis")
        yield m.gc_pauses.family()
        yield GaugeMetricFamily("tickroom_write_queue_depth", "Postgres writes waiting in memory",
                                value=reading.write_queue_depth)
        yield _counter("tickroom_write_queue_retries", "Postgres write rounds retried", {}, reading.write_retries)
        yield _counter("tickroom_writes", "Writes committed to Postgres", {}, reading.writes)
        backend = CounterMetricFamily("tickroom_backend_errors", "Redis and Postgres errors met",
                                      labels=["backend"])
        for name in ("postgres", "redis"):
            backend.add_metric([name], m.backend_errors[name])
        yield backend
        yield _counter("tickroom_reconnects", "Players back in a match they had dropped out of", {}, m.reconnects)
        yield GaugeMetricFamily("tickroom_draining", "1 while this node drains", value=int(reading.draining))
        yield GaugeMetricFamily("tickroom_accepting_rooms", "1 while this node takes new rooms",
                                value=int(reading.accepting))
        yield GaugeMetricFamily("tickroom_cpu_share", "share of one core the node used over the last second",
                                value=reading.cpu_share)


def _counter(name: str, documentation: str, labels: dict[str, str], value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def registry_of(collectors: Iterable[NodeCollector]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
