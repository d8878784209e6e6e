"""One settings object for a node, built at the edge from environment variables with CLI flags on top.

Each field declares its environment variable and help text; `add_arguments` turns the same table into
`tickroom serve` flags, and `Settings.load` validates everything once with an error naming the bad setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting has a bad value; the message names it."""


# The secret a development node signs tokens with; refused outside development (see `Settings.check`).
DEV_SECRET = "tickroom-development-secret-change-me"
# In the public URL: the node's id and port (each worker's own, with `workers` > 1).
NODE_PLACEHOLDER = "{node}"
PORT_PLACEHOLDER = "{port}"

def _setting(default: Any, env: str, help: str, *, low: float | None = None, high: float | None = None) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "low": low, "high": high})


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Settings:
    environment: str = _setting("development", "TICKROOM_ENV",
                                "development or production; production refuses the development JWT secret")
    host: str = _setting("127.0.0.1", "TICKROOM_HOST", "address to listen on")
    port: int = _setting(8000, "TICKROOM_PORT", "TCP port for WebSocket and HTTP", low=0, high=65535)
    workers: int = _setting(0, "TICKROOM_WORKERS",
                            "node processes `tickroom serve` runs, each a node of its own (NODE_ID-w0, -w1, ...) "
                            "sharing PORT for the lobby and HTTP, under one supervisor that restarts a dead one; "
                            "0: one per core this process may use; 1: one node, no supervisor", low=0, high=256)
    worker_port: int = _setting(0, "TICKROOM_WORKER_PORT",
                                "with several workers, worker i also listens on this port plus i, alone: the port "
                                "its public URL names (its players' /game); 0: PORT + 1", low=0, high=65535)
    node_id: str = _setting("", "TICKROOM_NODE_ID", "this node's id (default: hostname plus a random suffix)")
    redis_url: str = _setting("", "REDIS_URL", "Redis URL; unset: start an embedded Redis")
    database_url: str = _setting("", "DATABASE_URL", "Postgres URL; unset: start an embedded Postgres")
    data_dir: Path = _setting(Path(".tickroom"), "TICKROOM_DATA_DIR", "where embedded servers keep their data")
    jwt_secret: str = _setting(DEV_SECRET, "TICKROOM_JWT_SECRET", "HS256 secret for player tokens")
    games: str = _setting("", "TICKROOM_GAMES",
                          "the games (modes) this node serves, comma-separated; default: every installed game")
    game_options: str = _setting("", "TICKROOM_GAME_OPTIONS",
                                 'each game\'s options as JSON, by mode, e.g. {"arena": {"kill_target": 5}}')
    tick_ms: float = _setting(0.0, "TICKROOM_TICK_MS",
                              "tick period of fixed-tick games in milliseconds; 0: each game's own (arena: 15)",
                              low=0, high=1000)
    min_players: int = _setting(3, "TICKROOM_MIN_PLAYERS", "players needed to start a countdown (arena)",
                                low=1, high=64)
    max_players: int = _setting(5, "TICKROOM_MAX_PLAYERS", "seats per room; a full room starts at once (arena)",
                                low=1, high=64)
    countdown_s: float = _setting(10.0, "TICKROOM_COUNTDOWN_S", "countdown before a match starts", low=0, high=600)
    match_time_s: float = _setting(180.0, "TICKROOM_MATCH_TIME_S", "match time limit in seconds",
                                   low=1, high=86400)
    end_linger_s: float = _setting(2.0, "TICKROOM_END_LINGER_S", "seconds a finished room stays open",
                                   low=0, high=60)
    max_rooms: int = _setting(5000, "TICKROOM_MAX_ROOMS", "rooms this node may host at once", low=1,
                              high=1_000_000)
    cpu_limit: float = _setting(0.7, "TICKROOM_CPU_LIMIT",
                                "share of one core this node may use and still take new rooms (the lobby places "
                                "them elsewhere, or answers `capacity`); 1: no limit", low=0.05, high=1.0)
    lateness_limit_ms: float = _setting(10.0, "TICKROOM_LATENESS_LIMIT_MS",
                                        "the node takes no new room while more than one tick in a hundred (over a "
                                        "second) starts this late; 0: no limit", low=0, high=10000)
    rate_per_s: float = _setting(60.0, "TICKROOM_RATE_PER_S", "client messages per second (refill)",
                                 low=1, high=100000)
    rate_burst: int = _setting(120, "TICKROOM_RATE_BURST", "client message burst allowance", low=1, high=100000)
    hello_timeout_s: float = _setting(10.0, "TICKROOM_HELLO_TIMEOUT_S", "time allowed before `hello`",
                                      low=0.1, high=600)
    slow_client_bytes: int = _setting(65536, "TICKROOM_SLOW_CLIENT_BYTES",
                                      "unsent bytes beyond which a client's states are skipped",
                                      low=1024, high=1 << 30)
    send_buffer_bytes: int = _setting(65536, "TICKROOM_SEND_BUFFER_BYTES",
                                      "kernel send buffer per player socket (small: stale states do not queue)",
                                      low=4096, high=1 << 26)
    slow_client_timeout_s: float = _setting(5.0, "TICKROOM_SLOW_CLIENT_TIMEOUT_S",
                                            "seconds of skipped states before a slow client is dropped",
                                            low=0.1, high=600)
    log_level: str = _setting("INFO", "TICKROOM_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = _setting("json", "TICKROOM_LOG_FORMAT",
                               "json (one object per line) or text (for people)")
    admin_token: str = _setting("", "TICKROOM_ADMIN_TOKEN",
                                "bearer token for /admin and the drain call (unset: the admin view is off)")
    drain_deadline_s: float = _setting(300.0, "TICKROOM_DRAIN_DEADLINE_S",
                                       "seconds a draining node lets its running matches finish before it "
                                       "hands them to other nodes", low=0, high=86400)
    public_url: str = _setting("", "TICKROOM_PUBLIC_URL",
                               "the ws:// URL players reach this node at (default: ws://HOST:PORT, a worker's own "
                               "port); {node} and {port} in it stand for the node's id and port, each worker's own")
    lobby_prefix: str = _setting("tickroom", "TICKROOM_LOBBY_PREFIX", "prefix of every lobby key in Redis")
    backfill: bool = _setting(False, "TICKROOM_BACKFILL",
                              "a running arena match that loses a player takes the longest-waiting player in "
                              "(other games declare their own)")
    allowed_origins: str = _setting("", "TICKROOM_ALLOWED_ORIGINS",
                                    "web origins (scheme://host:port, comma-separated) whose pages may open /lobby and "
                                    "/game and read the JSON endpoints (CORS); * for any, development only; the "
                                    "node's own pages and clients that send no Origin are always allowed")
    playground: bool = _setting(True, "TICKROOM_PLAYGROUND",
                                "serve the browser playground at /play (static pages; a development node also mints "
                                "its players' tokens, in production a player pastes one)")
    direct_join: bool = _setting(False, "TICKROOM_DIRECT_JOIN",
                                 "development only: allow /game?room=ID without a lobby seat ticket")
    ticket_ttl_s: float = _setting(60.0, "TICKROOM_TICKET_TTL_S", "seconds a seat ticket stays valid",
                                   low=1, high=3600)
    join_window_s: float = _setting(15.0, "TICKROOM_JOIN_WINDOW_S",
                                    "seconds matched players have to reach the game before it starts without "
                                    "the missing ones", low=0.1, high=600)
    lobby_grace_s: float = _setting(5.0, "TICKROOM_LOBBY_GRACE_S",
                                    "seconds a waiting player whose lobby connection dropped keeps their seat",
                                    low=0, high=600)
    snapshot_every_s: float = _setting(30.0, "TICKROOM_SNAPSHOT_EVERY_S",
                                       "seconds between two snapshots of a running room in Redis (rooms are "
                                       "spread over the interval)", low=1, high=3600)
    snapshot_ttl_s: int = _setting(600, "TICKROOM_SNAPSHOT_TTL_S", "TTL of a room's snapshot in Redis",
                                   low=10, high=86400)
    stale_probe_s: float = _setting(2.0, "TICKROOM_STALE_PROBE_S",
                                    "seconds a player's older connection has to answer a ping when the player "
                                    "connects again; one that does not is dropped and the new one takes over",
                                    low=0.1, high=60)
    reconnect_grace_s: float = _setting(30.0, "TICKROOM_RECONNECT_GRACE_S",
                                        "seconds a player who dropped out of a running match keeps their seat",
                                        low=0, high=3600)
    player_ttl_s: int = _setting(300, "TICKROOM_PLAYER_TTL_S", "TTL of a player's presence in Redis",
                                 low=2, high=86400)
    room_ttl_s: int = _setting(600, "TICKROOM_ROOM_TTL_S", "TTL of a room in Redis, refreshed while it lives",
                               low=2, high=86400)
    node_heartbeat_s: float = _setting(1.0, "TICKROOM_NODE_HEARTBEAT_S", "seconds between node heartbeats",
                                       low=0.05, high=60)
    node_dead_after_s: float = _setting(5.0, "TICKROOM_NODE_DEAD_AFTER_S",
                                        "a node silent this long is dead", low=0.2, high=600)
    tracemalloc_dir: str = _setting("", "TICKROOM_TRACEMALLOC_DIR",
                                    "development only: trace the node's allocations (tracemalloc) and write a "
                                    "snapshot into this directory on each SIGUSR2 (bench/soak.py --tracemalloc)")

    @property
    def origins(self) -> frozenset[str]:
        """The allowed web origins, as browsers send them (no trailing slash)."""
        return frozenset(origin.strip().rstrip("/").lower() for origin in self.allowed_origins.split(",")
                         if origin.strip())

    @property
    def advertised_url(self) -> str:
        """The base URL `match_found` sends players to for rooms this node hosts: the public URL with its
        `{node}` and `{port}` filled in, or where the node listens."""
        url = self.public_url.rstrip("/")
        if not url:
            return f"ws://{self.host}:{self.port}"
        return url.replace(NODE_PLACEHOLDER, self.node_id).replace(PORT_PLACEHOLDER, str(self.port))

    def as_environment(self) -> dict[str, str]:
        """Every setting as its environment variable, as `Settings.load` reads it back into these settings
        (how a supervisor hands its settings to the workers it starts)."""
        environment = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            environment[f.metadata["env"]] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return environment

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, args: argparse.Namespace | None = None,
             **overrides: Any) -> Settings:
        """Environment first, then CLI flags that were given, then explicit overrides; validated once."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw: Any = environ.get(f.metadata["env"])
            if args is not None and getattr(args, f.name, None) is not None:
                raw = getattr(args, f.name)
            if f.name in overrides:
                raw = overrides[f.name]
            if raw is None or (raw == "" and f.type not in ("str",)):
                continue
            values[f.name] = _convert(f, raw)
        settings = cls(**values)
        if not settings.node_id:
            settings = dataclasses.replace(settings, node_id=_default_node_id())
        settings.validate()
        return settings

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            low, high = f.metadata["low"], f.metadata["high"]
            value = getattr(self, f.name)
            if low is not None and not low <= value <= high:
                raise SettingsError(f"{f.name} ({f.metadata['env']}) must be in [{low:g}, {high:g}], got {value!r}")
        if self.min_players > self.max_players:
            raise SettingsError(f"min_players ({self.min_players}) must not exceed max_players ({self.max_players})")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"log_level (TICKROOM_LOG_LEVEL) must be DEBUG, INFO, WARNING or ERROR, "
                                f"got {self.log_level!r}")
        if self.node_dead_after_s < 2 * self.node_heartbeat_s:
            raise SettingsError(f"node_dead_after_s ({self.node_dead_after_s:g}) must be at least twice "
                                f"node_heartbeat_s ({self.node_heartbeat_s:g})")
        if self.public_url and not self.public_url.startswith(("ws://", "wss://")):
            raise SettingsError(f"public_url (TICKROOM_PUBLIC_URL) must start with ws:// or wss://, "
                                f"got {self.public_url!r}")
        bare = self.public_url.replace(NODE_PLACEHOLDER, "").replace(PORT_PLACEHOLDER, "")
        if "{" in bare or "}" in bare:
            raise SettingsError(f"public_url (TICKROOM_PUBLIC_URL) may hold {NODE_PLACEHOLDER} and "
                                f"{PORT_PLACEHOLDER}, no other braces, got {self.public_url!r}")
        if not self.lobby_prefix or "{" in self.lobby_prefix or "}" in self.lobby_prefix:
            raise SettingsError(f"lobby_prefix (TICKROOM_LOBBY_PREFIX) must be non-empty and without braces, "
                                f"got {self.lobby_prefix!r}")
        if not self.jwt_secret:
            raise SettingsError("jwt_secret (TICKROOM_JWT_SECRET) must not be empty")
        if self.environment not in ("development", "production"):
            raise SettingsError(f"environment (TICKROOM_ENV) must be development or production, "
                                f"got {self.environment!r}")
        if self.environment != "development" and self.jwt_secret == DEV_SECRET:
            raise SettingsError("jwt_secret (TICKROOM_JWT_SECRET) is the development secret, which anyone can "
                                "read in the source: set a long random one (openssl rand -hex 32) in production")
        if self.environment != "development" and "*" in self.origins:
            raise SettingsError("allowed_origins (TICKROOM_ALLOWED_ORIGINS) may not be * in production: list the "
                                "origins of the pages that may use this node")
        if any(origin != "*" and not origin.startswith(("http://", "https://")) for origin in self.origins):
            raise SettingsError(f"allowed_origins (TICKROOM_ALLOWED_ORIGINS) must list origins such as "
                                f"https://game.example.com, or *, not {self.allowed_origins!r}")
        if self.environment != "development" and len(self.jwt_secret) < 32:
            raise SettingsError(f"jwt_secret (TICKROOM_JWT_SECRET) must be at least 32 characters in production, "
                                f"got {len(self.jwt_secret)}")
        if self.tracemalloc_dir and self.environment != "development":
            raise SettingsError("tracemalloc_dir (TICKROOM_TRACEMALLOC_DIR) is for development: tracing every "
                                "allocation slows a node down; unset it in production")
        if self.log_format not in ("json", "text"):
            raise SettingsError(f"log_format (TICKROOM_LOG_FORMAT) must be json or text, got {self.log_format!r}")

    @property
    def embedded(self) -> bool:
        return not self.redis_url or not self.database_url


def _convert(f: dataclasses.Field[Any], raw: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "bool":
            return _boolean(raw)
        return str(raw)
    except (TypeError, ValueError):
        expected = "true or false (1/0, yes/no, on/off)" if kind == "bool" else \
            f"a{'n' if kind == 'int' else ''} {kind}"
        raise SettingsError(f"{f.name} ({f.metadata['env']}) must be {expected}, got {raw!r}") from None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per setting, defaulting to None so that only given flags override the environment."""
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if not isinstance(f.default, Path) else str(f.default)
        shown = default if default != DEV_SECRET else "(development secret)"
        parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                            help=f"{f.metadata['help']} [env {f.metadata['env']}; default {shown!r}]")
