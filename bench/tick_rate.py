"""Does the tick drift? Ticks per second of rooms of five bots, measured over a minute.

Starts a node, plays ROOMS five-bot rooms for SECONDS, reads each room's tick counter from `/stats` at
the start and the end of the window, and prints the rate per room (target: 66.67 ticks/s, no drift).

    .venv/bin/python bench/tick_rate.py [--rooms 10] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from bench.tick_capacity import TICKROOM, data_services, free_port, get_stats, machine, wait_ready


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    with data_services() as urls:
        port = free_port()
        env = {**os.environ, **urls, "TICKROOM_WORKERS": "1", "TICKROOM_LOG_LEVEL": "WARNING",
               "TICKROOM_MATCH_TIME_S": "600"}
        server = subprocess.Popen([TICKROOM, "serve", "--port", str(port)], env=env)
        bot = None
        try:
            wait_ready(port, server)
            bot = subprocess.Popen([TICKROOM, "bot", "--url", f"ws://127.0.0.1:{port}", "--bots",
                                    str(args.rooms * 5), "--duration", str(args.seconds + 10), "--quiet"],
                                   stdout=subprocess.DEVNULL, env=env)
            time.sleep(5.0)
            first = get_stats(port)["rooms"]
            t0 = time.monotonic()
            time.sleep(args.seconds)
            last = get_stats(port)["rooms"]
            elapsed = time.monotonic() - t0
            rates = [(last[room]["ticks"] - first[room]["ticks"]) / elapsed for room in first if room in last]
            print(f"{len(rates)} rooms over {elapsed:.1f} s: ticks/s median {statistics.median(rates):.3f}, "
                  f"min {min(rates):.3f}, max {max(rates):.3f} (target {1000 / 15:.3f})")
        finally:
            if bot is not None:
                bot.wait(timeout=args.seconds + 60)
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
