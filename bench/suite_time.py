"""How long the test suite takes, wall clock, for some numbers of pytest-xdist workers.

Runs pytest as `scripts/test` does (after installs, without ruff and mypy) RUNS times per worker count and
prints the median, the fastest and the slowest run, with the test count of each (it must not shrink).

    .venv/bin/python -m bench.suite_time [--workers 4] [--runs 3] [-- PYTEST ARGS]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.tick_capacity import machine

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"(\d+) passed(?:, (\d+) failed)?")


def one_run(workers: int, extra: list[str]) -> tuple[float, int, int]:
    """Wall seconds, tests passed, tests failed."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", str(workers), "--dist", "worksteal", "-q",
                           "-p", "no:cacheprovider", *extra], cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    wall = time.monotonic() - started
    found = SUMMARY.findall(done.stdout.splitlines()[-1] if done.stdout else "")
    passed, failed = (int(found[0][0]), int(found[0][1] or 0)) if found else (0, -1)
    return wall, passed, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="4", help="comma-separated worker counts (0: one process)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    print(f"# machine: {machine()}")
    print("| workers | runs | wall median s | fastest s | slowest s | tests passed | failed |")
    print("|---|---|---|---|---|---|---|")
    for workers in (int(count) for count in args.workers.split(",")):
        runs = [one_run(workers, args.pytest_args) for _ in range(args.runs)]
        walls = [wall for wall, _, _ in runs]
        passed = "/".join(sorted({str(count) for _, count, _ in runs}))
        failed = sum(max(0, count) for _, _, count in runs)
        print(f"| {workers} | {args.runs} | {statistics.median(walls):.1f} | {min(walls):.1f} | {max(walls):.1f} "
              f"| {passed} | {failed} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
