"""What a bot run measured: each process's raw samples, their merged summary, and the live progress line.

Pure: no I/O and no clock of its own; the callers pass times in.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# A bot connected for less than this is too short to say anything about its rate, unless it never
# got in at all (then its rate is 0: it received nothing).
MIN_MEASURED_S = 1.0


@dataclass(slots=True)
class ProcessResult:
    """One process's raw samples, merged with the other processes' into one summary."""

    process: int
    bots: int
    rates: array[float] = field(default_factory=lambda: array("d"))  # states/s of each measured bot
    # The same, of the bots that got into a room (under overload, the others were refused `capacity` throughout).
    placed_rates: array[float] = field(default_factory=lambda: array("d"))
    # Bytes/s each measured bot received while in a room (every frame, with its WebSocket header).
    byte_rates: array[float] = field(default_factory=lambda: array("d"))
    acks_ms: array[float] = field(default_factory=lambda: array("d"))  # every input->ack latency, ms
    lag_ms: array[float] = field(default_factory=lambda: array("d"))  # input task's lateness per wake-up
    connected: int = 0  # bots that got a welcome at least once
    connected_s: float = 0.0  # summed over bots: time between welcome and match_end/close
    states: int = 0
    inputs: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by protocol code, `http_NNN` or `connect_*`
    disconnects: int = 0
    reconnects: int = 0  # bots back in the room whose connection they lost
    matches: set[str] = field(default_factory=set)  # ids of the rooms whose match_end a bot received
    matched: int = 0  # match_found messages received from the lobby
    capacity: int = 0  # joins the lobby refused because every node was full (tried again later; not errors)
    rooms: set[str] = field(default_factory=set)  # ids of the rooms the lobby's match_found sent a bot to
    waits_ms: array[float] = field(default_factory=lambda: array("d"))  # each join->match_found wait, ms
    cpu_s: float = 0.0
    wall_s: float = 0.0


def bot_rate(states: int, connected_s: float, welcomed: bool) -> float | None:
    """A bot's states per second over its connected time: 0 when it never got in (it received nothing),
    None when it got in but for too short a time to measure."""
    if not welcomed:
        return 0.0
    if connected_s < MIN_MEASURED_S:
        return None
    return states / connected_s


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of already sorted values, interpolated linearly; None when empty."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _merged(samples: Iterable[array[float]]) -> list[float]:
    merged: array[float] = array("d")
    for part in samples:
        merged.extend(part)
    return sorted(merged)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def summarize(results: Iterable[ProcessResult], *, bots: int, duration_s: float, wall_s: float,
              extra_cpu_s: float = 0.0) -> dict[str, Any]:
    """One JSON-ready summary over every process's samples; `extra_cpu_s` is the parent's own CPU time."""
    results = list(results)
    rates = _merged(result.rates for result in results)
    placed_rates = _merged(result.placed_rates for result in results)
    byte_rates = _merged(result.byte_rates for result in results)
    acks = _merged(result.acks_ms for result in results)
    lags = _merged(result.lag_ms for result in results)
    waits = _merged(result.waits_ms for result in results)
    connected_s = sum(result.connected_s for result in results)
    errors: Counter[str] = Counter()
    matches: set[str] = set()
    rooms: set[str] = set()
    for result in results:
        errors.update(result.errors)
        matches |= result.matches
        rooms |= result.rooms
    cpu_s = extra_cpu_s + sum(result.cpu_s for result in results)
    return {
        "bots": bots,
        "processes": len(results),
        "duration_s": duration_s,
        "wall_s": round(wall_s, 3),
        "connected": sum(result.connected for result in results),
        "states": sum(result.states for result in results),
        "states_per_s_p50": round(percentile(rates, 50) or 0.0, 2),
        "states_per_s_min": round(rates[0], 2) if rates else 0.0,
        "states_per_s_mean": round(sum(rates) / len(rates), 2) if rates else 0.0,
        # Bots under 60 states/s (0 for those whose room never started: a match needs 3 players).
        "bots_under_60_states_per_s": sum(1 for rate in rates if rate < 60.0),
        # Over the bots that got into a room: what the rooms a full node accepted gave their players.
        "states_per_s_min_placed": round(placed_rates[0], 2) if placed_rates else 0.0,
        "placed_under_60_states_per_s": sum(1 for rate in placed_rates if rate < 60.0),
        "bytes_per_s_p50": round(percentile(byte_rates, 50) or 0.0, 1),
        "bytes_per_s_max": round(byte_rates[-1], 1) if byte_rates else 0.0,
        "inputs_per_s_mean": round(sum(result.inputs for result in results) / connected_s, 2)
        if connected_s > 0 else 0.0,
        "acks": len(acks),
        "ack_ms_p50": _rounded(percentile(acks, 50), 3),
        "ack_ms_p99": _rounded(percentile(acks, 99), 3),
        "ack_ms_max": _rounded(acks[-1] if acks else None, 3),
        "errors": sum(errors.values()),
        "error_codes": dict(sorted(errors.items())),
        "disconnects": sum(result.disconnects for result in results),
        "reconnects": sum(result.reconnects for result in results),
        "matches": len(matches),
        "matched": sum(result.matched for result in results),
        "capacity_refusals": sum(result.capacity for result in results),
        "rooms": len(rooms),
        "wait_ms_p50": _rounded(percentile(waits, 50), 3),
        "wait_ms_p99": _rounded(percentile(waits, 99), 3),
        "cpu_percent": round(100.0 * cpu_s / wall_s, 1) if wall_s > 0 else 0.0,
        # How late the bots' input task woke up: high values mean the bot process itself is saturated.
        "loop_lag_ms_p99": _rounded(percentile(lags, 99), 3),
    }


def summary_text(summary: dict[str, Any], lobby: bool = False) -> str:
    """The summary for a human, a few lines; with `lobby`, one more on the matchmaking."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    lines = [
        f"bots {summary['connected']}/{summary['bots']} connected over {summary['wall_s']:.1f} s "
        f"in {summary['processes']} process(es), bot CPU {summary['cpu_percent']:.0f}%",
        f"states/s per bot: p50 {summary['states_per_s_p50']:.1f}, min {summary['states_per_s_min']:.1f} "
        f"({summary['states']} states); inputs/s per bot {summary['inputs_per_s_mean']:.1f}; "
        f"received per bot p50 {summary.get('bytes_per_s_p50', 0.0) / 1000:.1f} KB/s",
        f"input->ack: p50 {ms(summary['ack_ms_p50'])}, p99 {ms(summary['ack_ms_p99'])}, "
        f"max {ms(summary['ack_ms_max'])} ({summary['acks']} acks)",
        f"matches {summary['matches']}, errors {summary['errors']}, disconnects {summary['disconnects']}, "
        f"reconnects {summary['reconnects']}, "
        f"bot loop lag p99 {ms(summary['loop_lag_ms_p99'])}",
    ]
    if lobby:
        lines.append(f"lobby: matched {summary['matched']} time(s) into {summary['rooms']} room(s), "
                     f"join->match_found wait p50 {ms(summary['wait_ms_p50'])}, p99 {ms(summary['wait_ms_p99'])}"
                     + (f", {summary['capacity_refusals']} join(s) refused for capacity (every node full)"
                        if summary.get("capacity_refusals") else ""))
    if summary["error_codes"]:
        lines.append("errors by code: " + ", ".join(f"{code} {count}"
                                                    for code, count in summary["error_codes"].items()))
    return "\n".join(lines)


@dataclass(slots=True)
class Progress:
    """One process's running totals at one moment (the acks are only those since its previous report)."""

    process: int
    at: float
    playing: int
    states: int
    inputs: int
    errors: int
    disconnects: int
    matches: int
    acks_ms: array[float]
    matched: int = 0  # match_found messages from the lobby


class ProgressBoard:
    """Merges the latest progress of every process into one status line (with `lobby`, the matches found too)."""

    def __init__(self, bots: int, started_at: float, lobby: bool = False) -> None:
        self.bots = bots
        self.started_at = started_at
        self.lobby = lobby
        self._latest: dict[int, Progress] = {}
        self._rates: dict[int, tuple[float, float]] = {}  # states/s and inputs/s of each process
        self._acks: list[float] = []

    def update(self, progress: Progress) -> None:
        previous = self._latest.get(progress.process)
        since, states, inputs = ((previous.at, previous.states, previous.inputs) if previous is not None
                                 else (self.started_at, 0, 0))
        if progress.at > since:
            elapsed = progress.at - since
            self._rates[progress.process] = ((progress.states - states) / elapsed,
                                             (progress.inputs - inputs) / elapsed)
        self._latest[progress.process] = progress
        self._acks.extend(progress.acks_ms)

    def line(self, now: float) -> str:
        """The status line; the ack percentiles are over the samples since the previous line."""
        latest = self._latest.values()
        playing = sum(p.playing for p in latest)
        rate = sum(states for states, _ in self._rates.values())
        input_rate = sum(inputs for _, inputs in self._rates.values())
        per_bot = f"{rate / playing:5.1f}" if playing else "    -"
        inputs_per_bot = f"{input_rate / playing:4.1f}" if playing else "   -"
        acks = sorted(self._acks)
        self._acks.clear()
        p50, p99 = percentile(acks, 50), percentile(acks, 99)
        ack = "-" if p50 is None or p99 is None else f"{p50:.1f}/{p99:.1f} ms"
        line = (f"{now - self.started_at:6.1f}s  bots {playing}/{self.bots}  states/s {per_bot}/bot "
                f"({rate:.0f} total)  inputs/s {inputs_per_bot}/bot  ack p50/p99 {ack}  "
                f"errors {sum(p.errors for p in latest)}  "
                f"disconnects {sum(p.disconnects for p in latest)}  matches {sum(p.matches for p in latest)}")
        if self.lobby:
            line += f"  matched {sum(p.matched for p in latest)}"
        return line
