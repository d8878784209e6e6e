"""Bytes per arena client per second on the wire, JSON states against the `delta` encoding, and the encoding's CPU.

    .venv/bin/python -m bench.wire_bytes [--seconds 60] [--players 5] [--seed 1]

Plays an arena match with the arena's own bot policy (inputs at 30 Hz, a fire every 500 ms) at the arena's 66.7 Hz,
builds each tick's state message as the room does (server/rooms/room.py), and prints for each encoding the bytes
per client per second (state frames with their WebSocket headers; events are left out, the same in both) as the
median and p99 over one-second windows, and the encoding's cost per room tick (median of 5 runs).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from collections.abc import Iterator
from typing import Any

from game.arena import ArenaConfig, ArenaGame, Fire, Input
from game.arena_bot import ArenaBot
from server.net.broadcast import binary_frame, text_frame
from server.net.protocol import encode
from server.net.wire import delta, keyframe

TICK_MS = 1000 / 66.7


def arena_states(seconds: float, players: int, seed: int, *, churn: bool = False) -> Iterator[dict[str, Any]]:
    """The state messages of an arena match of `players` bots; with `churn`, players also leave and come back
    (and one new player joins) during the match."""
    rng = random.Random(seed)
    game = ArenaGame(random.Random(seed + 1), ArenaConfig(time_limit_s=3600, kill_target=10_000), TICK_MS)
    bots = {pid: ArenaBot(random.Random(seed * 100 + pid)) for pid in range(1, players + 1)}
    for pid in bots:
        game.join(pid, f"bot{pid}", 0)
    game.start(0)
    for pid, bot in bots.items():
        bot.on_message({"type": "welcome", "you": pid, "arena": {"w": 1000.0, "h": 1000.0}}, 0)
    ticks = round(seconds * 1000 / TICK_MS)
    away: set[int] = set()
    next_input_ms = 0.0
    for tick in range(1, ticks + 1):
        now_ms = round(tick * TICK_MS)
        if churn and tick % 97 == 0:
            pid = rng.choice(sorted(bots))
            if pid in away:
                away.discard(pid)
                game.join(pid, f"bot{pid}", now_ms)
                bots[pid].on_message({"type": "welcome", "you": pid, "arena": {"w": 1000.0, "h": 1000.0}}, now_ms)
            else:
                away.add(pid)
                game.away(pid, now_ms)
        if churn and tick == ticks // 2:
            pid = len(bots) + 1
            bots[pid] = ArenaBot(random.Random(seed * 100 + pid))
            game.join(pid, f"bot{pid}", now_ms)
            bots[pid].on_message({"type": "welcome", "you": pid, "arena": {"w": 1000.0, "h": 1000.0}}, now_ms)
        while next_input_ms <= now_ms:
            for pid, bot in bots.items():
                if pid in away:
                    continue
                for sent in bot.on_tick(int(next_input_ms)):
                    if sent["type"] == "input":
                        game.handle(pid, Input(seq=sent["seq"], dx=sent["dx"], dy=sent["dy"]), now_ms)
                    else:
                        game.handle(pid, Fire(seq=sent["seq"], angle=sent["angle"],
                                              seen_tick=sent.get("seen_tick")), now_ms)
            next_input_ms += 1000 / 30
        game.advance(now_ms)
        game.drain_events()
        message = {"type": "state", "tick": tick, "t": game.clock_ms, **game.state()}
        for pid, bot in bots.items():
            if pid not in away:
                bot.on_message(message, now_ms)
        yield message


def per_second(sizes: list[int]) -> list[float]:
    per_tick_s = TICK_MS / 1000
    window = round(1 / per_tick_s)
    return [sum(sizes[i:i + window]) / (window * per_tick_s) for i in range(0, len(sizes) - window + 1, window)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--players", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    states = list(arena_states(args.seconds, args.players, args.seed))
    json_sizes = [len(text_frame(encode(message))) for message in states]
    delta_sizes = [len(binary_frame(keyframe(states[0])))] + [
        len(binary_frame(delta(previous, message))) for previous, message in itertools.pairwise(states)]
    print(f"arena, {args.players} players, {len(states)} states at 66.7 Hz over {args.seconds:g} s")
    print(f"keyframe (msgpack): {len(binary_frame(keyframe(states[-1])))} bytes; "
          f"JSON state: {json_sizes[-1]} bytes")
    for name, sizes in (("json", json_sizes), ("delta", delta_sizes)):
        rates = sorted(per_second(sizes))
        p99 = rates[min(len(rates) - 1, round(0.99 * (len(rates) - 1)))]
        print(f"{name:>6}: frame p50 {statistics.median(sizes):.0f} B, max {max(sizes)} B; "
              f"per client {statistics.median(rates) / 1000:.2f} KB/s p50, {p99 / 1000:.2f} KB/s p99")
    pairs = list(itertools.pairwise(states))
    def json_frames() -> None:
        for _, message in pairs:
            text_frame(encode(message))

    def delta_frames() -> None:
        for previous, message in pairs:
            binary_frame(delta(previous, message))

    for name, encode_all in (("json", json_frames), ("delta", delta_frames)):
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            encode_all()
            runs.append((time.perf_counter() - started) / len(pairs) * 1e6)
        print(f"{name:>6}: encoding {statistics.median(runs):.1f} µs per room tick (median of 5 runs)")


if __name__ == "__main__":
    main()
