"""The reconnection storm (tests/test_lobby_cluster.py), bigger and with the default heartbeat and dead-after time.

Clients drop at random and come back through the lobby while a node is killed (and, in one variant, Redis loses
everything); prints how long the killed node's players took to be back in their matches, and every other
comeback's worst time, from the test's own assertions (which still apply: no refusal, no early end, one result
per match).

    .venv/bin/python -m bench.storm [--players 60] [--seconds 90] [--kill-at 45]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench.tick_capacity import machine

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--players", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--kill-at", type=float, default=45.0)
    args = parser.parse_args()
    print(f"# machine: {machine()}", flush=True)
    env = {**os.environ, "TICKROOM_STORM": f"{args.players},{args.seconds},{args.kill_at}"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-q", "-s", "-p", "no:cacheprovider",
                           "tests/test_lobby_cluster.py", "-k", "storm"], cwd=ROOT, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=4 * (args.seconds + 120))
    lines = done.stdout.splitlines()
    for line in lines:
        if "STORM " in line:
            print(line[line.index("STORM "):])
    print(lines[-1] if lines else done.stderr[-2000:])
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
