"""The `tickroom` command: serve, bot, migrate, token."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import re
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from server.net.auth import mint_token
from server.ops.eventloop import run as run_on_loop
from server.ops.logs import configure_logging
from server.ops.settings import DEV_SECRET, Settings, SettingsError, add_arguments
from server.ops.workers import WorkerSlot, plan_workers, worker_count
from server.rooms.catalog import GameLoadError, HostedGame, host_games

log = logging.getLogger("tickroom")


def game_modes(settings: Settings) -> dict[str, HostedGame]:
    """The games this node offers: the installed ones `TICKROOM_GAMES` picks, configured from the settings."""
    return host_games(settings)


def http_url(url: str) -> str:
    """The node's pages are on the same host and port as its WebSocket: ws://H:P → http://H:P."""
    return "http" + url.removeprefix("ws") if url.startswith("ws") else url


def ready_line(settings: Settings, url: str) -> str:
    """What `tickroom serve` prints once it listens: where a player starts (the playground in a browser, the
    lobby), and where a room can be joined by id only when direct joins are on (without them, /game wants the
    lobby's seat ticket)."""
    line = f"tickroom: node {settings.node_id} ready: "
    if settings.playground:
        line += f"play in a browser at {http_url(url)}/play; "
    line += f"players join at {url}/lobby (tokens: tickroom token NAME)"
    if settings.direct_join:
        line += f"; direct joins on: {url}/game?room=ID"
    return line


async def serve(settings: Settings, games: dict[str, HostedGame], slot: WorkerSlot | None = None) -> int:
    """One node until SIGTERM or SIGINT: `tickroom serve --workers 1`, or one worker of several (`slot`)."""
    from server.app import App
    from server.ops.services import connect_services

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        if settings.tracemalloc_dir:
            from server.ops.memtrace import MemoryTracer

            tracer = MemoryTracer(Path(settings.tracemalloc_dir))
            tracer.install(loop)
            stack.callback(tracer.close, loop)
        settings = await connect_services(settings, stack)
        app = await stack.enter_async_context(App(settings, games, persist=True, slot=slot))
        # What start-up made (modules, functions, settings, pools) lives as long as the process: out of the
        # collector's sight, so that a full collection scans only what rooms and sessions made (on a node with
        # 180 rooms a full collection held every room's tick for 31 ms, enough to make 1 % of ticks late).
        gc.collect()
        gc.freeze()
        print(ready_line(settings, app.url), file=sys.stderr, flush=True)
        await stop.wait()
        log.info("signal received; shutting down")
    return 0


async def _migrate(settings: Settings) -> int:
    from persistence.migrate import migrate_url
    from server.ops.services import connect_services

    async with AsyncExitStack() as stack:
        settings = await connect_services(settings, stack, migrate=False)
        applied = await migrate_url(settings.database_url)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(
        f"{m.version:03d}_{m.name}" for m in applied) if applied else "; the schema is up to date"))
    return 0


async def _drain(settings: Settings, node_id: str, deadline_s: float | None, wait: bool) -> int:
    """Ask a node to drain through Redis (it reads the request at its next heartbeat) and, with `wait`,
    follow its state until it is drained. The id of a `tickroom serve --workers N` (no node of its own) drains
    each of its live workers, NODE-w0, NODE-w1..."""
    from lobby.nodes import NodeRegistry
    from lobby.outage import lobby_client

    if not settings.redis_url:
        print("tickroom drain: set REDIS_URL (or --redis-url) to the deployment's Redis", file=sys.stderr)
        return 2
    client = lobby_client(settings.redis_url)
    try:
        registry = NodeRegistry(client, settings.lobby_prefix)
        if await registry.state_of(node_id) is not None:
            targets = [node_id]
        else:
            worker = re.compile(re.escape(node_id) + r"-w\d+")
            targets = sorted(node.node_id for node in await registry.live_nodes() if worker.fullmatch(node.node_id))
        if not targets:
            print(f"tickroom drain: no live node {node_id!r} (prefix {settings.lobby_prefix!r})", file=sys.stderr)
            return 1
        deadline = settings.drain_deadline_s if deadline_s is None else deadline_s
        for target in targets:
            await registry.request_drain(target, deadline)
            print(f"asked node {target} to drain: its matches have {deadline:g} s to finish before they are "
                  f"handed to other nodes", flush=True)
        if not wait:
            return 0
        shown: dict[str, str | None] = dict.fromkeys(targets, "serving")
        while True:
            await asyncio.sleep(1.0)
            for target in targets:
                state = await registry.state_of(target)
                if state is None:
                    print(f"node {target} is gone (stopped before it reported drained)")
                    return 1
                if state != shown[target]:
                    print(f"node {target}: {state}", flush=True)
                    shown[target] = state
            if all(state == "drained" for state in shown.values()):
                return 0
    finally:
        await client.aclose()


def _supervise(settings: Settings, workers: int) -> int:
    """`tickroom serve` with several workers: the supervisor (server/ops/supervisor.py)."""
    from server.ops.embedded import free_port
    from server.ops.supervisor import Supervisor

    if settings.port == 0:  # every worker must share one port: the supervisor asks the kernel for it
        settings = dataclasses.replace(settings, port=free_port(settings.host))
    try:
        slots = plan_workers(settings, workers)
    except SettingsError as error:
        print(f"tickroom: bad setting: {error}", file=sys.stderr)
        return 2
    return run_on_loop(Supervisor(dataclasses.replace(settings, workers=workers), slots).run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tickroom", description="Tickroom real-time game server")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser(
        "serve", help="run a node per core (--workers), with embedded Redis/Postgres when no URLs are set")
    add_arguments(serve_parser)

    from bot.cli import add_arguments as add_bot_arguments

    bot_parser = commands.add_parser("bot", help="headless bot players and load generator")
    add_bot_arguments(bot_parser)

    migrate_parser = commands.add_parser("migrate", help="apply the Postgres schema migrations")
    add_arguments(migrate_parser)

    drain_parser = commands.add_parser(
        "drain", help="take a node out of service: no new rooms, matches finish (or move at the deadline)")
    drain_parser.add_argument("node", help="the node's id (TICKROOM_NODE_ID); that of a `serve --workers N` "
                                           "drains each of its workers (NODE-w0, NODE-w1...)")
    drain_parser.add_argument("--deadline-s", type=float, default=None, dest="deadline",
                              help="seconds the node's matches have to finish before they move to other nodes "
                                   "[default: the node's drain_deadline_s setting here]")
    drain_parser.add_argument("--no-wait", action="store_true", help="ask, and do not wait for 'drained'")
    add_arguments(drain_parser)

    token_parser = commands.add_parser("token", help="print a development JWT for a player name")
    token_parser.add_argument("name", help="the player's display name (1 to 32 characters)")
    token_parser.add_argument("--id", dest="player_id", default=None,
                              help="player UUID (default: derived from the name, stable)")
    token_parser.add_argument("--ttl", type=float, default=86400.0, help="seconds until the token expires")
    token_parser.add_argument("--secret", default=None,
                              help="HS256 secret (default: TICKROOM_JWT_SECRET, else the development secret)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bot":
        from bot.cli import run as run_bot

        return run_bot(args)
    if args.command == "token":
        import os

        secret = args.secret or os.environ.get("TICKROOM_JWT_SECRET") or DEV_SECRET
        if not 1 <= len(args.name) <= 32:
            parser.error("the name must be 1 to 32 characters")
        print(mint_token(secret, args.name, player_id=args.player_id, ttl_s=args.ttl))
        return 0
    try:
        settings = Settings.load(args=args)
    except SettingsError as error:
        print(f"tickroom: bad setting: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        try:
            games = game_modes(settings)
        except GameLoadError as error:
            print(f"tickroom: {error}", file=sys.stderr)
            return 2
        workers = worker_count(settings)
        if workers == 1:
            return run_on_loop(serve(settings, games))
        return _supervise(settings, workers)
    if args.command == "migrate":
        return run_on_loop(_migrate(settings))
    if args.command == "drain":
        if args.deadline is not None and not 0 <= args.deadline <= 86400:
            parser.error("--deadline-s must be from 0 to 86400")
        return run_on_loop(_drain(settings, args.node, args.deadline, not args.no_wait))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
