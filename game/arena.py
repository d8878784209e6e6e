"""The built-in top-down arena shooter: players move and fire in a square, first to 10 kills wins.

A pure simulation stepped at 66.7 Hz with an injected RNG; time is kept in integer microseconds so
that rate limits, lifetimes and respawns land on exact ticks and runs replay identically. Shots are
lag-compensated: a `fire` may say which state its player was looking at (`game/arena_history.py`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from typing import Annotated

import msgspec
from msgspec import Meta

from game.api import Clock, Event, Forming, GameContext, GameDefinition, Json, Message, Seats, Standing
from game.arena_bot import ArenaBot
from game.arena_history import NOT_THERE, PositionHistory

SEQ_MAX = 2**53 - 1
ANGLE_MAX = 2 * math.pi
TICK_HZ = 1000 / 15


class Input(Message, frozen=True, tag="input"):
    """The player's movement direction now (the latest one wins); `seq` is acknowledged in `state`."""

    seq: Annotated[int, Meta(ge=0, le=SEQ_MAX)]
    dx: Annotated[float, Meta(ge=-1.0, le=1.0)]
    dy: Annotated[float, Meta(ge=-1.0, le=1.0)]


class Fire(Message, frozen=True, tag="fire"):
    """A shot at `angle` radians (0 = +x, counter-clockwise towards +y); the game applies its fire rate.
    `seen_tick`: the `tick` of the state the player was looking at when they fired; the shot then flies
    against the others where that state showed them (lag compensation). Absent: against where they are now."""

    seq: Annotated[int, Meta(ge=0, le=SEQ_MAX)]
    angle: Annotated[float, Meta(ge=-ANGLE_MAX, le=ANGLE_MAX)]
    seen_tick: Annotated[int, Meta(ge=1, le=SEQ_MAX)] | None = None


class ArenaOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an operator may set for the arena (`TICKROOM_GAME_OPTIONS`)."""

    kill_target: Annotated[int, Meta(ge=1, le=1000)] = 10

_US = 1_000_000  # microseconds per second
SNAPSHOT_VERSION = 1  # the layout of `ArenaGame.snapshot`; a restore refuses any other


@dataclass(frozen=True, slots=True)
class ArenaConfig:
    """The rules of one arena match. Distances in arena units, times in seconds."""

    width: float = 1000.0
    height: float = 1000.0
    speed: float = 200.0
    projectile_speed: float = 600.0
    projectile_life_s: float = 1.0
    fire_interval_s: float = 0.25
    hit_radius: float = 20.0
    damage: int = 10
    max_hp: int = 100
    respawn_delay_s: float = 2.0
    kill_target: int = 10
    time_limit_s: float = 180.0
    score_per_hit: int = 10
    score_per_kill: int = 100
    spawn_clearance: float = 100.0
    spawn_attempts: int = 20
    rewind_max_s: float = 0.2  # the furthest back a `fire` may be resolved (its `seen_tick`)
    history_s: float = 0.25  # how far back player positions are kept: at least `rewind_max_s`

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"ArenaConfig.{spec.name} must be a positive finite number, got {value!r}")
        if self.history_s < self.rewind_max_s:
            raise ValueError(f"ArenaConfig.history_s ({self.history_s}) must be at least rewind_max_s "
                             f"({self.rewind_max_s})")


@dataclass(frozen=True, slots=True)
class RankEntry:
    """One line of the arena's final ranking."""

    pid: int
    rank: int
    kills: int
    deaths: int
    score: int


class _Player:
    """Mutable per-player state; plain slots because the tick reads and writes it every 15 ms."""

    __slots__ = ("active", "alive", "deaths", "hp", "in_match", "kills", "next_fire_us", "pid", "respawn_us",
                 "score", "seated", "seq", "trail", "vx", "vy", "x", "y")

    def __init__(self, pid: int, x: float, y: float, hp: int, trail: list[float]) -> None:
        self.pid = pid
        self.x = x
        self.y = y
        self.vx = 0.0  # current velocity, units/s: the input direction times the speed
        self.vy = 0.0
        self.hp = hp
        self.kills = 0
        self.deaths = 0
        self.score = 0
        self.seq = 0
        self.alive = True
        self.active = True  # connected: acts, is hit, is listed in the state
        self.seated = True  # holds a seat: connected, or away and free to come back (the reconnect grace)
        self.in_match = True  # takes part in the ranking
        self.next_fire_us = 0
        self.respawn_us = 0
        self.trail = trail  # where they were at each kept step (PositionHistory)


class _Projectile:
    __slots__ = ("expires_us", "id", "owner", "owner_pid", "vx", "vx_out", "vy", "vy_out", "x", "y")

    def __init__(self, projectile_id: int, owner: _Player, vx: float, vy: float, expires_us: int) -> None:
        self.id = projectile_id
        self.owner = owner
        self.owner_pid = owner.pid
        self.x = owner.x
        self.y = owner.y
        self.vx = vx
        self.vy = vy
        # Velocity never changes, so its wire form is rounded once; + 0.0 turns -0.0 into 0.0.
        self.vx_out = round(vx, 1) + 0.0
        self.vy_out = round(vy, 1) + 0.0
        self.expires_us = expires_us


def _out(value: float) -> float:
    """Round a non-negative coordinate to 1 decimal: 4x cheaper than round(value, 1), and the state
    methods repeat the expression inline to save the call too."""
    return (value * 10.0 + 0.5) // 1.0 / 10.0


class ArenaGame:
    """The arena simulation behind the `Game` protocol of `game.api`."""

    def __init__(self, rng: random.Random, config: ArenaConfig = ArenaConfig(),
                 tick_ms: float = 1000 / TICK_HZ) -> None:
        self.rng = rng
        self.config = config
        self.tick_ms = tick_ms  # the host's tick period: the state of tick N shows the game at room ms N * tick_ms
        self.history = PositionHistory(round(config.history_s * _US), round(tick_ms * 1000))
        self._rewind_max_us = round(config.rewind_max_s * _US)
        self._players: dict[int, _Player] = {}
        self._active: list[_Player] = []  # active players in pid order: what the tick walks over
        self._projectiles: list[_Projectile] = []
        self._events: list[dict[str, Json]] = []
        self._next_projectile_id = 1
        self._started = False
        self._now_us = 0
        self._end_reason: str | None = None
        self._last_player: _Player | None = None
        self._fire_interval_us = round(config.fire_interval_s * _US)
        self._projectile_life_us = round(config.projectile_life_s * _US)
        self._respawn_delay_us = round(config.respawn_delay_s * _US)
        self._time_limit_us = round(config.time_limit_s * _US)
        self._last_ms: int | None = None  # the room clock of the last `advance`

    # -- the host's interface (game/api.py) ----------------------------------------------------------

    def join(self, pid: int, name: str, now_ms: int) -> None:
        self.add_player(pid)

    def away(self, pid: int, now_ms: int) -> None:
        self.remove_player(pid)

    def release(self, pid: int, now_ms: int) -> None:
        self.release_seat(pid)

    def handle(self, pid: int, message: Message, now_ms: int) -> None:
        if type(message) is Input:
            self.set_input(pid, message.seq, message.dx, message.dy)
        elif type(message) is Fire:
            seen_tick = message.seen_tick
            if seen_tick is None or self._last_ms is None:
                self.fire(pid, message.seq, message.angle)
            else:
                # The state of tick N showed the game as `advance(round(N * tick_ms))` left it (game/api.py).
                seen_ms = round(seen_tick * self.tick_ms)
                self.fire(pid, message.seq, message.angle, (self._last_ms - seen_ms) * 1000)

    def advance(self, now_ms: int) -> None:
        last = self._last_ms
        self._last_ms = now_ms
        if last is not None and now_ms > last:
            self.step((now_ms - last) / 1000.0)

    def next_wake_ms(self) -> int | None:
        return None

    def welcome(self, pid: int) -> dict[str, Json]:
        return {"arena": {"w": self.config.width, "h": self.config.height}}

    def state(self) -> dict[str, Json]:
        return {"players": self.players_state(), "projectiles": self.projectiles_state()}

    def standings(self) -> list[Standing]:
        return [Standing(entry.pid, entry.rank, entry.score, {"kills": entry.kills, "deaths": entry.deaths})
                for entry in self.ranking()]

    # -- seats -------------------------------------------------------------------------------------

    def add_player(self, pid: int) -> None:
        player = self._players.get(pid)
        if player is None:
            x, y = self._free_spot(None)
            player = _Player(pid, x, y, self.config.max_hp, self.history.new_trail())
            self._players[pid] = player
        elif player.active:
            return
        else:
            # A returning player keeps stats, hp, position and any pending respawn (leaving is no way
            # to skip the respawn wait or heal); a new connection starts a new seq counter and stands still.
            # Nothing was recorded while they were away: no rewound shot finds them at an old place.
            self.history.forget(player.trail)
            player.active = True
            player.seated = True
            if not player.in_match:  # left before the match began: their old spot means nothing now
                player.x, player.y = self._free_spot(None)
                player.in_match = True
            player.seq = 0
            player.vx = player.vy = 0.0
        self._update_active()
        self._end_if_one_seat_left()  # the only player still holding a seat is back

    def remove_player(self, pid: int) -> None:
        player = self._players.get(pid)
        if player is None or not player.active:
            return
        player.active = False
        self._update_active()
        # Shots of someone who left vanish with them: clients never see a projectile of an unlisted player.
        self._projectiles = [shot for shot in self._projectiles if shot.owner is not player]

    def release_seat(self, pid: int) -> None:
        player = self._players.get(pid)
        if player is None:
            return
        self.remove_player(pid)
        player.seated = False
        self._end_if_one_seat_left()

    def _end_if_one_seat_left(self) -> None:
        """A running match with one seat still held ends ("last_player"), that player first, once they are
        connected. Players who are merely away hold their seats: they never make anyone the last player."""
        if not self._started or self._end_reason is not None:
            return
        holders = [player for player in self._players.values() if player.seated and player.in_match]
        if len(holders) == 1 and holders[0].active:
            self._last_player = holders[0]
            self._end_reason = "last_player"

    def _update_active(self) -> None:
        self._active = sorted((p for p in self._players.values() if p.active), key=lambda p: p.pid)

    # -- the match ---------------------------------------------------------------------------------

    def start(self, now_ms: int = 0) -> None:
        hp = self.config.max_hp
        placed: list[_Player] = []
        for player in sorted(self._players.values(), key=lambda p: p.pid):
            player.kills = player.deaths = player.score = 0
            player.hp = hp
            player.alive = True
            player.next_fire_us = 0
            player.in_match = player.active
            if player.active:
                player.x, player.y = self._free_spot(placed)
                placed.append(player)
        self._projectiles = []
        self._events = []
        self._now_us = 0
        self._end_reason = None
        self._last_player = None
        self._started = True
        self.history.clear()

    @property
    def clock_ms(self) -> int:
        return self._now_us // 1000

    @property
    def end_reason(self) -> str | None:
        return self._end_reason

    # -- snapshots ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Json]:
        return {"v": SNAPSHOT_VERSION, "started": self._started, "now_us": self._now_us,
                "players": [{"pid": p.pid, "x": p.x, "y": p.y, "hp": p.hp, "kills": p.kills, "deaths": p.deaths,
                             "score": p.score, "alive": p.alive, "in_match": p.in_match,
                             "respawn_us": p.respawn_us}
                            for p in sorted(self._players.values(), key=lambda p: p.pid)]}

    def restore(self, snapshot: dict[str, Json]) -> None:
        if snapshot.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"arena snapshot version {snapshot.get('v')!r} is not {SNAPSHOT_VERSION}")
        if self._players:
            raise ValueError("restore needs a game without players")
        config = self.config
        for entry in snapshot["players"]:
            player = _Player(int(entry["pid"]), min(max(float(entry["x"]), 0.0), config.width),
                             min(max(float(entry["y"]), 0.0), config.height),
                             min(max(int(entry["hp"]), 0), config.max_hp), self.history.new_trail())
            player.kills = int(entry["kills"])
            player.deaths = int(entry["deaths"])
            player.score = int(entry["score"])
            player.alive = bool(entry["alive"])
            player.in_match = bool(entry["in_match"])
            player.respawn_us = int(entry["respawn_us"])
            player.active = False
            self._players[player.pid] = player
        self._started = bool(snapshot["started"])
        self._now_us = int(snapshot["now_us"])
        self.history.clear()  # not in the snapshot: rewinds reach back only as far as this host has recorded
        self._update_active()

    # -- inputs ------------------------------------------------------------------------------------

    def set_input(self, pid: int, seq: int, dx: float, dy: float) -> None:
        player = self._players.get(pid)
        if player is None or not player.active:
            return
        if seq > player.seq:
            player.seq = seq
        length_sq = dx * dx + dy * dy
        if length_sq > 1.0:
            scale = 1.0 / math.sqrt(length_sq)
            dx *= scale
            dy *= scale
        # Kept while dead as well: the latest direction applies again from the respawn on.
        speed = self.config.speed
        player.vx = dx * speed
        player.vy = dy * speed

    def fire(self, pid: int, seq: int, angle: float, rewind_us: int = 0) -> None:
        """A shot from where the player is now. With `rewind_us` > 0 (at most `rewind_max_s`, and as far as the
        history goes), it is resolved as if fired that long ago, when the state the player saw was current:
        it flies the steps since then against the positions they had, then goes on from where it is now."""
        player = self._players.get(pid)
        if player is None or not player.active:
            return
        if seq > player.seq:
            player.seq = seq
        now = self._now_us
        if (not self._started or self._end_reason is not None or not player.alive
                or now < player.next_fire_us):
            return
        player.next_fire_us = now + self._fire_interval_us
        speed = self.config.projectile_speed
        shot = _Projectile(self._next_projectile_id, player, math.cos(angle) * speed, math.sin(angle) * speed,
                           now + self._projectile_life_us)
        self._next_projectile_id += 1
        if rewind_us > 0 and not self._fly_rewound(shot, now - min(rewind_us, self._rewind_max_us)):
            return
        self._projectiles.append(shot)

    def _fly_rewound(self, shot: _Projectile, seen_us: int) -> bool:
        """Fly `shot` from match time `seen_us` (or the oldest kept step after it) up to now, one kept step at
        a time, as `_step_projectiles` would have then, against the others where they were at each step. Its
        life counts from then too. False: it hit someone, left the arena or expired on the way."""
        seen, steps = self.history.since(seen_us)
        if not steps:
            return True
        shot.expires_us = seen + self._projectile_life_us
        config = self.config
        width = config.width
        height = config.height
        radius_sq = config.hit_radius * config.hit_radius
        owner = shot.owner
        # Only someone alive now, in the same life as at that step (the trail's mark is their death count),
        # can be hit: a rewound shot never kills a body that already died, or finds a respawned one.
        targets = [p for p in self._active if p.alive and p is not owner]
        x = shot.x
        y = shot.y
        last = seen
        for time_us, offset in steps:
            if time_us >= shot.expires_us:
                return False
            dt = (time_us - last) / _US
            last = time_us
            x += shot.vx * dt
            y += shot.vy * dt
            if x < 0.0 or x > width or y < 0.0 or y > height:
                return False
            for target in targets:
                trail = target.trail
                if trail[offset + 2] == target.deaths:
                    off_x = trail[offset] - x
                    off_y = trail[offset + 1] - y
                    if off_x * off_x + off_y * off_y <= radius_sq:
                        self._hit(owner, target, self._now_us)
                        return False
        shot.x = x
        shot.y = y
        return True

    # -- the tick ----------------------------------------------------------------------------------

    def step(self, dt: float) -> None:
        if self._end_reason is not None:
            return
        started = self._started
        if started:
            self._now_us += round(dt * _US)
        now = self._now_us
        width = self.config.width
        height = self.config.height
        # Where this step's state shows each player, for shots fired by someone looking at it (lag compensation).
        offset = self.history.record(now)
        for player in self._active:
            trail = player.trail
            if player.alive:
                vx = player.vx
                vy = player.vy
                if vx or vy:
                    x = player.x + vx * dt
                    y = player.y + vy * dt
                    player.x = x = 0.0 if x < 0.0 else width if x > width else x
                    player.y = y = 0.0 if y < 0.0 else height if y > height else y
                    trail[offset] = x
                    trail[offset + 1] = y
                else:
                    trail[offset] = player.x
                    trail[offset + 1] = player.y
                trail[offset + 2] = player.deaths
            elif started and now >= player.respawn_us:
                self._respawn(player)
                trail[offset] = player.x
                trail[offset + 1] = player.y
                trail[offset + 2] = player.deaths
            else:
                trail[offset + 2] = NOT_THERE
        if self._projectiles:
            self._step_projectiles(dt, now)
        if started and self._end_reason is None and now >= self._time_limit_us:
            self._end_reason = "time"

    def _step_projectiles(self, dt: float, now: int) -> None:
        width = self.config.width
        height = self.config.height
        radius = self.config.hit_radius
        radius_sq = radius * radius
        # Who can be hit, as the x-band a shot must be in to be near: one chained compare rejects almost
        # every pair, 2.5x cheaper than a squared distance. `alive` is checked again on a hit, since a
        # shot earlier in this loop may have just killed that player.
        targets = [(p.x - radius, p.x + radius, p) for p in self._active if p.alive]
        shots = self._projectiles
        kept: list[_Projectile] = []
        # Positions are sampled once per tick: at 600 units/s and 15 ms a shot moves 9 units, well under
        # the 40-unit hit diameter, so a swept test would cost time for nothing.
        for shot in shots:
            if now >= shot.expires_us:
                continue
            x = shot.x + shot.vx * dt
            y = shot.y + shot.vy * dt
            if x < 0.0 or x > width or y < 0.0 or y > height:
                continue
            shot.x = x
            shot.y = y
            owner = shot.owner
            for low_x, high_x, target in targets:
                if low_x <= x <= high_x and target is not owner:
                    off_x = target.x - x
                    off_y = target.y - y
                    if off_x * off_x + off_y * off_y <= radius_sq and target.alive:
                        self._hit(owner, target, now)
                        break
            else:
                kept.append(shot)
                continue
            if self._end_reason is not None:
                # The match is decided: the other shots stay where they are, nothing else scores.
                kept.extend(shots[shots.index(shot) + 1:])
                break
        self._projectiles = kept

    def _hit(self, shooter: _Player, target: _Player, now: int) -> None:
        config = self.config
        hp = target.hp - config.damage
        if hp < 0:
            hp = 0
        target.hp = hp
        shooter.score += config.score_per_hit
        events = self._events
        events.append({"kind": "hit", "p": shooter.pid, "target": target.pid, "hp": hp})
        if hp > 0:
            return
        target.alive = False
        target.deaths += 1
        target.respawn_us = now + self._respawn_delay_us
        shooter.kills += 1
        shooter.score += config.score_per_kill
        events.append({"kind": "kill", "p": shooter.pid, "target": target.pid})
        if shooter.kills >= config.kill_target:
            self._end_reason = "kills"

    def _respawn(self, player: _Player) -> None:
        player.x, player.y = self._free_spot([p for p in self._active if p.alive and p is not player])
        player.hp = self.config.max_hp
        player.alive = True
        self._events.append({"kind": "respawn", "p": player.pid, "x": _out(player.x), "y": _out(player.y)})

    def _free_spot(self, others: list[_Player] | None) -> tuple[float, float]:
        """A random spot at least `spawn_clearance` from every player in `others` (default: the living
        active ones); after `spawn_attempts` misses, the spot farthest from its nearest player."""
        config = self.config
        uniform = self.rng.uniform
        if others is None:
            others = [p for p in self._active if p.alive]
        clearance_sq = config.spawn_clearance ** 2
        best = (0.0, 0.0)
        best_gap_sq = -1.0
        for _ in range(config.spawn_attempts):
            x = uniform(0.0, config.width)
            y = uniform(0.0, config.height)
            gap_sq = min(((p.x - x) ** 2 + (p.y - y) ** 2 for p in others), default=math.inf)
            if gap_sq >= clearance_sq:
                return x, y
            if gap_sq > best_gap_sq:
                best = (x, y)
                best_gap_sq = gap_sq
        return best

    # -- output ------------------------------------------------------------------------------------

    def players_state(self) -> list[Json]:
        return [{"p": p.pid, "x": (p.x * 10.0 + 0.5) // 1.0 / 10.0, "y": (p.y * 10.0 + 0.5) // 1.0 / 10.0,
                 "hp": p.hp, "k": p.kills, "d": p.deaths, "sc": p.score, "seq": p.seq, "alive": p.alive}
                for p in self._active]

    def projectiles_state(self) -> list[Json]:
        return [{"id": s.id, "p": s.owner_pid, "x": (s.x * 10.0 + 0.5) // 1.0 / 10.0,
                 "y": (s.y * 10.0 + 0.5) // 1.0 / 10.0, "vx": s.vx_out, "vy": s.vy_out}
                for s in self._projectiles]

    def drain_events(self) -> list[Event]:
        events = self._events
        if not events:
            return []
        self._events = []
        return [Event(body) for body in events]

    def ranking(self) -> list[RankEntry]:
        """Most kills, then fewest deaths; equal players share a rank and keep join order."""
        ranked = sorted((p for p in self._players.values() if p.in_match), key=lambda p: (-p.kills, p.deaths, p.pid))
        entries: list[RankEntry] = []
        first_rank = 1
        winner = self._last_player if self._end_reason == "last_player" else None
        if winner is not None:
            ranked.remove(winner)
            entries.append(RankEntry(winner.pid, 1, winner.kills, winner.deaths, winner.score))
            first_rank = 2
        rank = first_rank
        previous: tuple[int, int] | None = None
        for place, player in enumerate(ranked):
            key = (player.kills, player.deaths)
            if key != previous:
                rank = first_rank + place
                previous = key
            entries.append(RankEntry(player.pid, rank, player.kills, player.deaths, player.score))
        return entries


def make_arena(ctx: GameContext) -> ArenaGame:
    options = ctx.options if isinstance(ctx.options, ArenaOptions) else ArenaOptions()
    tick_ms = ctx.tick_ms if ctx.tick_ms is not None else 1000 / TICK_HZ
    if ctx.time_limit_ms > 0:
        return ArenaGame(ctx.rng, ArenaConfig(kill_target=options.kill_target, time_limit_s=ctx.time_limit_ms / 1000),
                         tick_ms)
    return ArenaGame(ctx.rng, ArenaConfig(kill_target=options.kill_target), tick_ms)


DEFINITION = GameDefinition(
    mode="arena", title="Arena", description="Top-down shooter: move, fire, first to the kill target wins.",
    seats=Seats(min=3, max=5), forming=Forming.COUNTDOWN, clock=Clock(TICK_HZ), messages=(Input, Fire),
    make=make_arena, figures=("kills", "deaths"), options=ArenaOptions, bot=ArenaBot)
