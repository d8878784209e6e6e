"""What one bot run does: its validated settings, each bot's identity and rooms (or the lobby's), and the
split over processes.

Pure: built once at the edge from the CLI flags and the environment, then handed to each process.
"""

from __future__ import annotations

import argparse
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from server.net.auth import NAME_MAX
from server.net.wire import Encoding
from server.ops.settings import DEV_SECRET
from server.rooms.catalog import installed_games

ENCODINGS = tuple(encoding.value for encoding in Encoding)

GROUP_SIZE = 5  # seats per arena room: one group of bots fills one room
ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# `--room R` plays generation g > 0 in `R-g`; leave room for the suffix within the 64-character limit.
ROOM_BASE_MAX = 64 - len("-999999")
# Player ids are derived from the run id and the bot's index: distinct, and reproducible from the names.
_BOT_NAMESPACE = uuid.UUID("0b7d4e39-5c1f-4a8e-9d62-3e8f1a2b4c5d")


class BotSettingsError(ValueError):
    """A bot setting has a bad value; the message names it."""


@dataclass(frozen=True, slots=True)
class BotSettings:
    url: str  # base URL, no trailing slash: ws://HOST:PORT
    bots: int
    duration_s: float
    room: str | None  # every bot in this one room; None: groups of five in rooms of their own
    secret: str
    processes: int
    ramp_s: float
    json: bool
    quiet: bool
    seed: int | None
    run_id: str  # unique per run, so several bot processes can load one server side by side
    lobby: bool = False  # matched through URL/lobby, which picks the rooms; excludes `room`
    mode: str = "arena"  # the game the bots play (each installed game brings its own bot policy)
    encoding: str = "json"  # the state encoding the bots ask for in `hello` (server/net/wire.py)

    @property
    def grouped(self) -> bool:
        """Whether the bots play in groups of GROUP_SIZE with rooms of their own (neither --room nor --lobby)."""
        return self.room is None and not self.lobby

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str],
                  run_id: str | None = None) -> BotSettings:
        url = str(args.url).rstrip("/")
        if not (url.startswith("ws://") or url.startswith("wss://")) or len(url) <= len("ws://"):
            raise BotSettingsError(f"--url must be ws://HOST:PORT or wss://HOST:PORT, not {args.url!r}")
        if "?" in url or "#" in url:
            raise BotSettingsError("--url is the base URL; the bot adds /game?room=ROOM or /lobby itself")
        if args.bots < 1:
            raise BotSettingsError(f"--bots must be at least 1, not {args.bots}")
        if not args.duration > 0:
            raise BotSettingsError(f"--duration must be a positive number of seconds, not {args.duration}")
        if not args.ramp >= 0:
            raise BotSettingsError(f"--ramp must be zero or more seconds, not {args.ramp}")
        if args.processes < 1:
            raise BotSettingsError(f"--processes must be at least 1, not {args.processes}")
        room = args.room
        lobby = bool(args.lobby)
        if lobby and room is not None:
            raise BotSettingsError("--room and --lobby exclude each other: with --lobby the lobby picks the rooms")
        if room is not None and (ROOM_ID.fullmatch(room) is None or len(room) > ROOM_BASE_MAX):
            raise BotSettingsError(f"--room must be 1 to {ROOM_BASE_MAX} characters of A-Z a-z 0-9 _ -, "
                                   f"not {room!r}")
        mode = str(getattr(args, "mode", "arena"))
        playable = sorted(name for name, game in installed_games().items() if game.bot is not None)
        if mode not in playable:
            raise BotSettingsError(f"--mode must be a game the bot can play ({', '.join(playable)}), not {mode!r}")
        encoding = str(getattr(args, "encoding", "json"))
        if encoding not in ENCODINGS:
            raise BotSettingsError(f"--encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
        secret = args.secret or environ.get("TICKROOM_JWT_SECRET") or DEV_SECRET
        grouped = room is None and not lobby
        processes = min(args.processes, len(split_bots(args.bots, args.processes, grouped=grouped)))
        return cls(url=url, bots=args.bots, duration_s=float(args.duration), room=room, secret=secret,
                   processes=processes, ramp_s=float(args.ramp), json=bool(args.json), quiet=bool(args.quiet),
                   seed=args.seed, run_id=run_id or secrets.token_hex(3), lobby=lobby, mode=mode,
                   encoding=encoding)


@dataclass(frozen=True, slots=True)
class BotSpec:
    """One bot's identity: a unique name and player UUID, and the group (room) it plays in (0 when ungrouped)."""

    index: int
    name: str
    player_id: str
    group: int


@dataclass(frozen=True, slots=True)
class ProcessPlan:
    """The share of the run one OS process plays: its bots, and when the run started and ends."""

    process: int
    settings: BotSettings
    bots: tuple[BotSpec, ...]
    started_at: float  # time.monotonic() of the run's start, the same clock in every process on one host
    ends_at: float


def bot_spec(run_id: str, index: int, grouped: bool) -> BotSpec:
    name = f"bot-{run_id}-{index}"[:NAME_MAX]
    player_id = str(uuid.uuid5(_BOT_NAMESPACE, f"{run_id}/{index}"))
    return BotSpec(index=index, name=name, player_id=player_id, group=index // GROUP_SIZE if grouped else 0)


def room_id(settings: BotSettings, group: int, generation: int) -> str:
    """The room a group plays its `generation`-th match in; a finished room refuses joins, so each match
    after the first needs a new id."""
    if settings.room is not None:
        return settings.room if generation == 0 else f"{settings.room}-{generation}"
    return f"b{settings.run_id}-{group}-{generation}"


def split_bots(bots: int, processes: int, grouped: bool) -> list[range]:
    """Contiguous slices of bot indices, one per process, as even as possible.

    With groups, a group never straddles two processes: the bots of one room agree on the next room id
    through state shared within their process. Fewer slices than `processes` when there are too few groups.
    """
    unit = GROUP_SIZE if grouped else 1
    units = -(-bots // unit)
    count = max(1, min(processes, units))
    slices = []
    first_unit = 0
    for k in range(count):
        units_here = units // count + (1 if k < units % count else 0)
        start = first_unit * unit
        stop = min(bots, (first_unit + units_here) * unit)
        slices.append(range(start, stop))
        first_unit += units_here
    return slices


def plan_processes(settings: BotSettings, started_at: float) -> list[ProcessPlan]:
    grouped = settings.grouped
    return [ProcessPlan(process=k, settings=settings,
                        bots=tuple(bot_spec(settings.run_id, i, grouped) for i in indices),
                        started_at=started_at, ends_at=started_at + settings.duration_s)
            for k, indices in enumerate(split_bots(settings.bots, settings.processes, grouped))]
