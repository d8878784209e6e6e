"""One worker process of `tickroom serve --workers N`, started by its supervisor (server/ops/supervisor.py) as
`python -m server.worker INDEX`: a node of its own, with the settings the supervisor put in its environment and
the node id and ports of its slot (server/ops/workers.py).
"""

from __future__ import annotations

import sys

from server.cli import game_modes, serve
from server.ops.eventloop import run as run_on_loop
from server.ops.logs import configure_logging
from server.ops.settings import Settings, SettingsError
from server.ops.workers import plan_workers, worker_count
from server.rooms.catalog import GameLoadError


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m server.worker INDEX (tickroom serve --workers N starts these)", file=sys.stderr)
        return 2
    try:
        base = Settings.load()
    except SettingsError as error:
        print(f"tickroom worker: bad setting: {error}", file=sys.stderr)
        return 2
    count = worker_count(base)
    if count < 2 or base.port == 0 or int(argv[0]) >= count:
        print(f"tickroom worker: worker {argv[0]} of {count} on port {base.port}: the supervisor sets "
              f"TICKROOM_WORKERS and TICKROOM_PORT for its workers", file=sys.stderr)
        return 2
    try:
        slot = plan_workers(base, count)[int(argv[0])]
    except SettingsError as error:
        print(f"tickroom worker: bad setting: {error}", file=sys.stderr)
        return 2
    settings = slot.settings(base)
    configure_logging(settings.log_level, settings.log_format, node=settings.node_id)
    try:
        games = game_modes(settings)
    except GameLoadError as error:
        print(f"tickroom worker {settings.node_id}: {error}", file=sys.stderr)
        return 2
    return run_on_loop(serve(settings, games, slot))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
