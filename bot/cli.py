"""The bot's command line, shared by `tickroom bot ...` and `python -m bot ...`: flags, live progress on
stderr, and the summary (as the last line of stdout with --json)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

import orjson

from bot.plan import BotSettings, BotSettingsError
from bot.stats import summary_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="ws://127.0.0.1:8000",
                        help="the node's base URL; bots connect to URL/game?room=ROOM, or URL/lobby with --lobby "
                        "(default: %(default)s)")
    parser.add_argument("--bots", type=int, default=5, help="how many bots (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds; the run then stops by itself (default: %(default)s)")
    parser.add_argument("--room", default=None,
                        help="put every bot in this room (ROOM, then ROOM-1, ROOM-2... for later matches); "
                        "default: groups of 5 in rooms of their own, unique to this run")
    parser.add_argument("--mode", default="arena",
                        help="the game to play, by mode (GET /modes lists a server's; default: %(default)s)")
    parser.add_argument("--lobby", action="store_true",
                        help="matchmaking: each bot joins the queue of --mode at URL/lobby, plays the room its "
                        "match_found names, then queues again (excludes --room)")
    parser.add_argument("--secret", default=None,
                        help="HS256 secret for the bots' tokens (default: TICKROOM_JWT_SECRET, else the "
                        "development secret)")
    parser.add_argument("--processes", type=int, default=1,
                        help="split the bots over this many OS processes, whole rooms each (default: %(default)s)")
    parser.add_argument("--ramp", type=float, default=2.0,
                        help="spread the bots' first connects over this many seconds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the bots' random behaviour")
    parser.add_argument("--encoding", default="json", choices=("json", "delta"),
                        help="the state encoding the bots ask for in hello (docs/protocol.md; default: %(default)s, "
                             "the lighter to decode: a load generator's core goes further; delta for the bytes)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object, the last line of stdout")
    parser.add_argument("--quiet", action="store_true", help="no live progress on stderr")


class ProgressLine:
    """One status line on a stream: rewritten in place on a terminal, one line per update otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.dirty = False

    def show(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.dirty = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.dirty:
            self.stream.write("\n")
            self.stream.flush()
            self.dirty = False


def run(args: argparse.Namespace) -> int:
    """Play the run the flags describe and print its summary; 0 when at least one bot got in."""
    try:
        settings = BotSettings.from_args(args, os.environ)
    except BotSettingsError as error:
        print(f"tickroom bot: bad setting: {error}", file=sys.stderr)
        return 2
    progress = None if settings.quiet else ProgressLine(sys.stderr)
    if not settings.quiet:
        if settings.lobby:
            target = "rooms chosen by the lobby"
        elif settings.room:
            target = f"room {settings.room}"
        else:
            target = f"rooms b{settings.run_id}-*"
        print(f"tickroom bot: {settings.bots} bot(s) against {settings.url} ({target}) for "
              f"{settings.duration_s:g} s in {settings.processes} process(es)", file=sys.stderr, flush=True)
    try:
        # picows (the `bot` extra) is needed only to run bots, not to list `tickroom`'s commands.
        from bot.runner import run_load

        summary = run_load(settings, progress.show if progress is not None else None)
    except RuntimeError as error:
        if progress is not None:
            progress.finish()
        print(f"tickroom bot: {error}", file=sys.stderr)
        return 1
    if progress is not None:
        progress.finish()
    if settings.json:
        if not settings.quiet:
            print(summary_text(summary, settings.lobby), file=sys.stderr)
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
        sys.stdout.flush()
    else:
        print(summary_text(summary, settings.lobby), flush=True)
    return 0 if summary["connected"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Tickroom headless bots and load generator")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
