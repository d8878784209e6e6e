"""How a bot plays the arena (`ArenaBot`, the arena's `BotPolicy`), decided from the latest `state` only: chase
and aim at the nearest living player, circle them when close, keep off the walls, and wander when alone.

Pure: the decoded messages and the bot's own small memory in, the inputs to send out.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

WALL_MARGIN = 50.0  # closer than this to a wall, a bot steers away from it
CLOSE_RANGE = 150.0  # closer than this to its target, a bot circles instead of closing in
WALL_PUSH = 2.0  # how hard a wall pushes at zero distance, relative to a unit move
FIRE_EVERY = 15  # inputs between two fires: 500 ms at the bot's 30 inputs a second
WANDER_TURN = 0.25  # radians a lone bot's heading may drift per input
_NOTHING: list[dict[str, Any]] = []


def steer(you: int, players: Sequence[Mapping[str, Any]], wander: float, orbit: float,
          width: float, height: float) -> tuple[float, float, float]:
    """The move (dx, dy, each in [-1, 1]) and angle (radians, about [-π, π]) for player `you`.

    The angle is the aim at the nearest living player; alone, it is the heading actually taken, which
    the bot keeps as its next `wander` heading. `orbit` (+1 or -1) is the direction in which to circle
    a close target. A bot missing from `players` (or dead) stands still.
    """
    me = None
    others = []
    for entry in players:
        if entry["p"] == you:
            me = entry
        elif entry["alive"]:
            others.append(entry)
    if me is None or not me["alive"]:
        return 0.0, 0.0, wander
    x: float = me["x"]
    y: float = me["y"]
    alone = not others
    if alone:
        dx, dy = math.cos(wander), math.sin(wander)
        angle = wander
    else:
        nearest = math.inf
        tx = ty = 0.0
        for entry in others:
            ex = entry["x"] - x
            ey = entry["y"] - y
            distance = ex * ex + ey * ey
            if distance < nearest:
                nearest, tx, ty = distance, ex, ey
        angle = math.atan2(ty, tx)
        distance = math.sqrt(nearest)
        if distance > 0:
            tx, ty = tx / distance, ty / distance
        if distance < CLOSE_RANGE:
            dx, dy = -ty * orbit, tx * orbit
        else:
            dx, dy = tx, ty
    if x < WALL_MARGIN:
        dx += WALL_PUSH * (WALL_MARGIN - x) / WALL_MARGIN
    elif x > width - WALL_MARGIN:
        dx -= WALL_PUSH * (x - (width - WALL_MARGIN)) / WALL_MARGIN
    if y < WALL_MARGIN:
        dy += WALL_PUSH * (WALL_MARGIN - y) / WALL_MARGIN
    elif y > height - WALL_MARGIN:
        dy -= WALL_PUSH * (y - (height - WALL_MARGIN)) / WALL_MARGIN
    length = math.hypot(dx, dy)
    if length > 1.0:
        dx, dy = dx / length, dy / length
    if alone:
        angle = math.atan2(dy, dx)
    # Three decimals keep the input frames short; round(v * 1000) is much cheaper than round(v, 3).
    return round(dx * 1000) / 1000, round(dy * 1000) / 1000, angle


class ArenaBot:
    """The arena's bot policy: one `input` per tick of the bot (its latest move), a `fire` every FIRE_EVERY,
    aimed at the latest state and naming its tick (`seen_tick`: the server resolves the shot against it)."""

    __slots__ = ("height", "inputs", "orbit", "players", "rng", "seen_tick", "seq", "wander", "width", "you")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.you = 0
        self.width = 1000.0
        self.height = 1000.0
        self.players: Sequence[Mapping[str, Any]] = ()
        self.seen_tick: int | None = None  # the tick of the state `players` is from
        self.wander = rng.uniform(-math.pi, math.pi)
        self.orbit = rng.choice((-1.0, 1.0))
        self.seq = 0
        self.inputs = 0

    def on_message(self, message: dict[str, Any], now_ms: int) -> list[dict[str, Any]]:
        kind = message["type"]
        if kind == "state":
            self.players = message["players"]
            self.seen_tick = message.get("tick")
        elif kind == "welcome":
            arena = message.get("arena") or {}
            self.you = int(message["you"])
            self.width = float(arena.get("w", 1000.0))
            self.height = float(arena.get("h", 1000.0))
            self.players = ()
            self.seen_tick = None
            self.seq = 0  # a new connection starts a new seq counter
        elif kind == "match_end":
            self.you = 0
        return _NOTHING

    def on_tick(self, now_ms: int) -> list[dict[str, Any]]:
        if not self.you:
            return _NOTHING
        dx, dy, angle = steer(self.you, self.players, self.wander, self.orbit, self.width, self.height)
        self.wander = math.remainder(angle + (self.rng.random() - 0.5) * (2 * WANDER_TURN), math.tau)
        self.seq += 1
        sent = [{"type": "input", "seq": self.seq, "dx": dx, "dy": dy}]
        self.inputs += 1
        if self.inputs % FIRE_EVERY == 0:
            self.seq += 1
            fire = {"type": "fire", "seq": self.seq, "angle": round(angle * 1000) / 1000}
            if self.seen_tick is not None:
                fire["seen_tick"] = self.seen_tick
            sent.append(fire)
        return sent
